// Records as a few buffers (a RecordPack), and the reading of NDJSON records into one.
//
// A large upload's records were parsed, checked, made into messages, checked again and copied to
// the writer thread one object at a time, all on the event loop that serves every request: a third
// of a core during a 1M-record upload, which delayed every other request's steps (a trivial invoke's
// p99 1.6x to 2.0x its idle p99). Records sent as NDJSON (UpsertRecordsRequest.ndjson: the REST
// API's uploads) are read here instead, in the Datastore's reader thread (reader-thread.ts), into a
// pack: what crosses between threads is then three typed arrays a part, not a thousand objects, and
// the event loop only hands it on. Its strings are UTF-8 bytes, outside the event loop's heap: as
// one JS string a part (150 KB for 1,000 keyword records, in V8's large-object space) they made the
// event loop's heap grow by the upload's size, and its major collections paused it 11 to 17 ms (exp).

import type { JsonObject } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { errorMetadata } from "../shared/errors.js";
import type { RecordInput } from "./model.js";
import { blank, NestsTooDeep, parseRecordJson } from "./record-json.js";
import { checkFloat32s, checkRecord, checkRecordDimension, readJsonRecord } from "./rules.js";

/** RecordPack is records in a few buffers: cheap to copy between threads. */
export interface RecordPack {
  /** n is how many records. */
  n: number;
  /** dimension is every vector's; 0 while no record has one (each is to be embedded). */
  dimension: number;
  /** strings holds each record's id, text and metadata (JSON text) as UTF-8, one after another. */
  strings: Uint8Array;
  /** ends[3i], ends[3i+1], ends[3i+2] are where record i's id, text and metadata end in `strings` (bytes). */
  ends: Uint32Array;
  /** vectors holds record i's vector at [i * dimension, (i + 1) * dimension). */
  vectors: Float32Array;
}

/**
 * ParkedPack names a pack the reader thread sent straight to the writer thread (on a SQLite file),
 * so that the event loop never holds its buffers: as a copy there, a 1M-record upload's packs were
 * a few hundred megabytes of short-lived buffers on the event loop's heap, which V8 collected with
 * a major collection every half second (pauses of 10 to 17 ms, exp).
 */
export interface ParkedPack {
  parked: number;
  /** fill is what the event loop embedded for the pack's records that had no vector. */
  fill?: Embeddings;
}

/** Embeddings are vectors for a pack's records that had none (`missing`, in order), checked, `dimension` each. */
export interface Embeddings {
  missing: number[];
  dimension: number;
  vectors: Float32Array;
}

/** Records are what a write takes: records one by one, a pack of them, or a pack parked in the writer thread. */
export type Records = RecordInput[] | RecordPack | ParkedPack;

/** isParked says whether records are a parked pack. */
export function isParked(records: Records): records is ParkedPack {
  return !Array.isArray(records) && "parked" in records;
}

/** textOf is record i's text in a pack. */
export function textOf(pack: RecordPack, i: number): string {
  return bufferOf(pack.strings).toString("utf8", pack.ends[3 * i], pack.ends[3 * i + 1]);
}

/** bufferOf is a Buffer over bytes (a pack's bytes arrive from another thread as a Uint8Array). */
function bufferOf(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * recordsOf unpacks records (its vectors views of the pack's); records one by one as they are. A
 * parked pack is only the writer thread's to unpack (writer-thread.ts); only it is sent one.
 */
export function recordsOf(records: Records): RecordInput[] {
  if (Array.isArray(records)) return records;
  if (isParked(records)) throw new Error("a parked pack reached a writer that has none");
  const { n, dimension: d, ends, vectors } = records;
  const strings = bufferOf(records.strings);
  const out = new Array<RecordInput>(n);
  let at = 0;
  for (let i = 0; i < n; i++) {
    const id = strings.toString("utf8", at, ends[3 * i]);
    const text = strings.toString("utf8", ends[3 * i], ends[3 * i + 1]);
    at = ends[3 * i + 2];
    out[i] = { id, text, metadata: strings.toString("utf8", ends[3 * i + 1], at), vector: vectors.subarray(i * d, (i + 1) * d) };
  }
  return out;
}

/** RecordReadError is the first bad record of a read: the error's message, its param, and the REST API's code for it. */
export interface RecordReadError {
  message: string;
  param: string;
  /** code is the REST error code ("invalid_record", "nested_too_deep"); undefined for a rule's InvalidArgument. */
  code?: string;
}

/** NdjsonRead is a read's records, with those that have no vector (to be embedded, in the pack's order), or its error. */
export type NdjsonRead = { pack: RecordPack; missing: number[] } | { error: RecordReadError };

/** A read whose pack the reader thread parked in the writer thread: what the event loop needs of it (the texts to embed). */
export interface ParkedRead {
  parked: number;
  n: number;
  dimension: number;
  missing: number[];
  texts: string[];
}

const NEWLINE = 10;

/**
 * readNdjson reads NDJSON records (blank lines skipped) into a pack, checking each as an upsert
 * does: `first` is the first record's index in its request (errors name records[first + i]),
 * `dimension` the store's (0: the first vector's), and no line may nest deeper than `maxDepth`.
 */
export function readNdjson(bytes: Uint8Array, first: number, dimension: number, maxDepth: number): NdjsonRead {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // Room for a vector per line; trimmed at the end when some lines were blank.
  let lines = 1;
  for (let at = buf.indexOf(NEWLINE); at >= 0; at = buf.indexOf(NEWLINE, at + 1)) lines++;
  let d = dimension;
  let vectors = new Float32Array(lines * d);
  const strings: string[] = [];
  const ends: number[] = [];
  const missing: number[] = [];
  let length = 0;
  let n = 0;
  for (let start = 0; start < buf.length; ) {
    let nl = buf.indexOf(NEWLINE, start);
    if (nl < 0) nl = buf.length;
    const from = start;
    start = nl + 1;
    if (blank(buf, from, nl)) continue;
    const index = first + n;
    let value: unknown;
    try {
      value = parseRecordJson(buf.subarray(from, nl), maxDepth);
    } catch (e) {
      if (e instanceof NestsTooDeep)
        return fail(`records[${index}]: the line nests deeper than ${maxDepth} levels`, `records[${index}]`, "nested_too_deep");
      return fail(`records[${index}]: line is not valid JSON: ${(e as Error).message}`, `records[${index}]`, "invalid_record");
    }
    const read = readJsonRecord(value);
    if ("problem" in read) return fail(`records[${index}]: ${read.problem}`, `records[${index}]${read.param}`, "invalid_record");
    try {
      checkRecord(read, index);
      if (read.vector.length === 0) missing.push(n);
      else {
        if (!d) {
          d = read.vector.length;
          vectors = new Float32Array(lines * d);
        }
        checkRecordDimension(read.vector.length, d, index);
        const v = vectors.subarray(n * d, (n + 1) * d);
        v.set(read.vector);
        checkFloat32s(v, index);
      }
    } catch (e) {
      if (!(e instanceof ConnectError)) throw e;
      return fail(e.rawMessage, e.metadata.get(errorMetadata.param) ?? `records[${index}]`);
    }
    const metadata = JSON.stringify(read.metadata as JsonObject);
    strings.push(read.id, read.text, metadata);
    ends.push((length += Buffer.byteLength(read.id)), (length += Buffer.byteLength(read.text)), (length += Buffer.byteLength(metadata)));
    n++;
  }
  // A copy crosses threads with its whole buffer: trimmed to the records read.
  if (vectors.length > n * d) vectors = vectors.slice(0, n * d);
  const joined = strings.join("");
  // A buffer of its own (never the shared pool's), so that it can move to another thread.
  const utf8 = Buffer.allocUnsafeSlow(Buffer.byteLength(joined));
  utf8.write(joined);
  return { pack: { n, dimension: d, strings: utf8, ends: Uint32Array.from(ends), vectors }, missing };
}

/** buffersOf are a pack's buffers, each its own: what moves when the pack moves to another thread. */
export function buffersOf(pack: RecordPack): ArrayBuffer[] {
  return [pack.strings.buffer, pack.ends.buffer, pack.vectors.buffer] as ArrayBuffer[];
}

function fail(message: string, param: string, code?: string): NdjsonRead {
  return { error: code ? { message, param, code } : { message, param } };
}

/**
 * checkEmbeddings checks and packs the embeddings of a pack's records that had no vector (`missing`,
 * in order), as readNdjson checked the others: each of `dimension` (the pack's; 0 for one that had
 * no vector, whose first embedding gives it); `first` is the pack's first record's index in its request.
 */
export function checkEmbeddings(missing: number[], embedded: number[][], dimension: number, first: number): Embeddings {
  const d = dimension || embedded[0].length;
  const vectors = new Float32Array(missing.length * d);
  missing.forEach((i, j) => {
    checkRecordDimension(embedded[j].length, d, first + i);
    const v = vectors.subarray(j * d, (j + 1) * d);
    v.set(embedded[j]);
    checkFloat32s(v, first + i);
  });
  return { missing, dimension: d, vectors };
}

/** filled is a pack with the embeddings of its records that had no vector in place. */
export function filled(pack: RecordPack, { missing, dimension: d, vectors }: Embeddings): RecordPack {
  const all = pack.dimension ? pack.vectors : new Float32Array(pack.n * d);
  missing.forEach((i, j) => {
    all.set(vectors.subarray(j * d, (j + 1) * d), i * d);
  });
  return { ...pack, dimension: d, vectors: all };
}
