import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Store, UpsertRecordsStreamRequestSchema } from "../../gen/shaker/datastore/v1/datastore_pb.js";
import { blank, parseRecordJson } from "../datastore/record-json.js";
import {
  type JsonRecord,
  readJsonRecord,
  readVector,
  searchModeProblem,
  searchModes,
  upsertPartSize,
  vectorForms,
} from "../datastore/rules.js";
import type { Clients } from "../shared/clients.js";
import { mapErrors } from "../shared/errors.js";
import { defaultMaxJsonDepth, msOf } from "../shared/json.js";
import { callerHeaders, field, HttpError, type Req, readJson, sendJson, tooDeep } from "./http.js";
import type { EdgeRouter } from "./router.js";

/** Options of the datastore routes. */
export interface DatastoreRoutesOptions {
  clients: Clients;
  /** maxBodyBytes bounds JSON bodies, and each record of a streamed upsert. */
  maxBodyBytes: number;
  /** maxJsonDepth bounds how deeply a JSON body (or an NDJSON line) nests; default defaultMaxJsonDepth (64). */
  maxJsonDepth?: number;
}

function storeJson(s: Store): JsonObject {
  return {
    name: s.name,
    embedding_model: s.embeddingModel,
    dimension: s.dimension,
    record_count: s.recordCount,
    created_at: new Date(msOf(s.createdAt)).toISOString(),
  };
}

function bad(i: number, problem: string, param: string): HttpError {
  return new HttpError(400, `records[${i}]: ${problem}`, `records[${i}]${param}`, "invalid_record");
}

/** recordOf checks one JSON record by the Datastore's rules, naming its index and the problem. */
export function recordOf(value: unknown, i: number): JsonRecord {
  const read = readJsonRecord(value);
  if ("problem" in read) throw bad(i, read.problem, read.param);
  return read;
}

/** An upload lets the event loop turn after this many records. */
const yieldEvery = 64;

/** recordJson parses element `index` of a JSON body's "records" (its depth is counted with the body's). */
function recordJson(bytes: Buffer, index: number): unknown {
  try {
    return parseRecordJson(bytes, Number.POSITIVE_INFINITY);
  } catch (e) {
    throw bad(index, `record is not valid JSON: ${(e as Error).message}`, "");
  }
}

/** tail is the last `n` bytes of pieces, as pieces. */
function tail(pieces: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = pieces.length - 1; n > 0; i--) {
    const take = Math.min(n, pieces[i].length);
    out.unshift(pieces[i].subarray(pieces[i].length - take));
    n -= take;
  }
  return out;
}

/**
 * ndjsonParts cuts an NDJSON body into parts of upsertPartSize records (blank lines skipped, as the
 * reader skips them), each the pieces of the body's chunks that hold its whole lines (never copied:
 * the event loop allocates nothing per part but the list), never holding more than a part. The
 * records are read by the Datastore (UpsertRecordsStreamRequest.ndjson), off the event loop; here a
 * line is only found and measured.
 */
async function* ndjsonParts(req: Req, maxLine: number): AsyncGenerator<Uint8Array[]> {
  // The part's bytes so far: whole lines, then the start of a line crossing chunks.
  const pieces: Buffer[] = [];
  // The bytes of the unfinished line held at the end of pieces.
  let held = 0;
  let records = 0;
  let index = 0;
  const tooLong = () => bad(index, `line is longer than the limit of ${maxLine} bytes`, "");
  for await (const chunk of req as AsyncIterable<Buffer>) {
    let from = 0;
    let start = 0;
    let nl: number;
    while ((nl = chunk.indexOf(NEWLINE, start)) >= 0) {
      if (held + nl - start > maxLine) throw tooLong();
      // A line crossing chunks is joined to be looked at (once a chunk at most).
      const isBlank = held ? blank(Buffer.concat([...tail(pieces, held), chunk.subarray(0, nl)])) : blank(chunk, start, nl);
      held = 0;
      start = nl + 1;
      if (isBlank) continue;
      index++;
      if (++records === upsertPartSize) {
        pieces.push(chunk.subarray(from, start));
        yield pieces.splice(0);
        records = 0;
        from = start;
      }
    }
    if (from < chunk.length) pieces.push(chunk.subarray(from));
    held += chunk.length - start;
    if (held > maxLine) throw tooLong();
  }
  if (held && !blank(Buffer.concat(tail(pieces, held)))) records++;
  if (records > 0 || index === 0) yield pieces;
}

const [QUOTE, BACKSLASH, COMMA, SPACE, NEWLINE, RETURN, TAB] = [34, 92, 44, 32, 10, 13, 9];
const [OPEN_BRACE, CLOSE_BRACE, OPEN_BRACKET, CLOSE_BRACKET] = [123, 125, 91, 93];

/** plain says whether a character outside strings is part of a number or literal (not structure, not space). */
function plain(c: number): boolean {
  return (
    c !== QUOTE &&
    c !== COMMA &&
    c !== OPEN_BRACE &&
    c !== CLOSE_BRACE &&
    c !== OPEN_BRACKET &&
    c !== CLOSE_BRACKET &&
    c !== SPACE &&
    c !== NEWLINE &&
    c !== RETURN &&
    c !== TAB
  );
}

/**
 * jsonRecords yields the elements of the top-level "records" array of a JSON body as they arrive,
 * so a body of 100,000 records is never held whole. Other top-level fields are skipped.
 */
async function* jsonRecords(req: Req, maxRecord: number, maxDepth: number): AsyncGenerator<unknown> {
  const decoder = new TextDecoder();
  let depth = 0;
  let inString = false;
  let escaped = false;
  let key = "";
  let keyHead = "";
  let stringStart = -1;
  let inRecords = false;
  let sawRecords = false;
  let element: string[] | undefined;
  let elementSize = 0;
  let index = 0;
  let started = false;
  const invalid = (why: string) => new HttpError(400, `the request body is not valid JSON: ${why}`, null, "invalid_json");
  const finish = (text: string, from: number, to: number): unknown => {
    element!.push(text.slice(from, to));
    const raw = Buffer.from(element!.join(""));
    element = undefined;
    return recordJson(raw, index);
  };
  for await (const chunk of req as AsyncIterable<Buffer>) {
    const text = decoder.decode(chunk, { stream: true });
    const end = text.length;
    let from = 0;
    // Character codes, and runs skipped in tight loops: a record's vector is thousands of characters
    // of which only its commas and brackets matter here.
    for (let i = 0; i < end; i++) {
      let c = text.charCodeAt(i);
      if (inString) {
        if (escaped) {
          escaped = false;
          continue;
        }
        while (c !== QUOTE && c !== BACKSLASH && ++i < end) c = text.charCodeAt(i);
        if (i >= end) break;
        if (c === BACKSLASH) escaped = true;
        else {
          inString = false;
          if (depth === 1 && stringStart >= 0) key = keyHead + text.slice(stringStart, i);
          stringStart = -1;
          keyHead = "";
        }
        continue;
      }
      if (c === SPACE || c === NEWLINE || c === RETURN || c === TAB) continue;
      if (!started) {
        if (c !== OPEN_BRACE) throw invalid("the body must be a JSON object");
        started = true;
      } else if (depth === 0) throw invalid("unexpected text after the object");
      if (inRecords && depth === 2 && element === undefined && c !== COMMA && c !== CLOSE_BRACKET) {
        element = [];
        elementSize = 0;
        from = i;
      }
      if (c === QUOTE) {
        inString = true;
        if (depth === 1) stringStart = i + 1;
      } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
        if (depth === 1 && c === OPEN_BRACKET && key === "records") {
          inRecords = true;
          sawRecords = true;
        }
        if (++depth > maxDepth) throw tooDeep(maxDepth);
      } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
        if (inRecords && depth === 2 && c === CLOSE_BRACKET) {
          if (element !== undefined) {
            yield finish(text, from, i);
            index++;
          }
          inRecords = false;
        }
        depth--;
        if (depth < 0) throw invalid(`unexpected '${String.fromCharCode(c)}'`);
      } else if (c === COMMA) {
        if (depth === 1) key = "";
        if (inRecords && depth === 2) {
          if (element === undefined) throw bad(index, "is missing (two commas in a row)", "");
          yield finish(text, from, i);
          index++;
        }
      } else {
        // A number or a literal: none of its characters changes the state.
        while (i + 1 < end && plain(text.charCodeAt(i + 1))) i++;
      }
    }
    if (inString && stringStart >= 0) {
      // A top-level string crossing chunks: keep its start, enough to recognise the key "records".
      keyHead = (keyHead + text.slice(stringStart)).slice(0, 64);
      stringStart = 0;
    }
    if (element !== undefined) {
      element.push(text.slice(from));
      elementSize += text.length - from;
      if (elementSize > maxRecord) throw bad(index, `record is longer than the limit of ${maxRecord} bytes`, "");
    }
  }
  if (!started || depth !== 0 || inString) throw invalid("the body ends early");
  if (!sawRecords)
    throw new HttpError(400, "'records' is required: an array of {id, text, metadata?, vector?}", "records", "missing_field");
}

/** addDatastoreRoutes registers the datastore REST routes of spec section 4. */
export function addDatastoreRoutes(router: EdgeRouter, options: DatastoreRoutesOptions): void {
  const { datastore } = options.clients;
  const maxJsonDepth = options.maxJsonDepth ?? defaultMaxJsonDepth;
  router
    .add("POST", "/v1/datastores", async (req, res) => {
      const headers = callerHeaders(req);
      const body = await readJson(req, options.maxBodyBytes, maxJsonDepth);
      const resp = await datastore.createStore(
        { name: field.string(body, "name", true), embeddingModel: field.string(body, "embedding_model") ?? "" },
        { headers },
      );
      sendJson(res, 201, { data: storeJson(resp.store!) });
    })
    .add("GET", "/v1/datastores", async (req, res) => {
      const resp = await datastore.listStores({}, { headers: callerHeaders(req) });
      sendJson(res, 200, { data: resp.stores.map(storeJson) });
    })
    .add("DELETE", "/v1/datastores/:name", async (req, res, params) => {
      const resp = await datastore.deleteStore({ name: params.name }, { headers: callerHeaders(req) });
      sendJson(res, 200, { data: { name: resp.name, deleted: true } });
    })
    .add("POST", "/v1/datastores/:name/records", async (req, res, params) => {
      const headers = callerHeaders(req);
      const ndjson = /^application\/(x-)?ndjson\b/i.test(String(req.headers["content-type"] ?? ""));
      async function* ndjsonStream() {
        for await (const pieces of ndjsonParts(req, options.maxBodyBytes)) yield { store: params.name, ndjson: pieces };
      }
      async function* jsonStream() {
        let batch: JsonRecord[] = [];
        let index = 0;
        for await (const value of jsonRecords(req, options.maxBodyBytes, maxJsonDepth)) {
          batch.push(recordOf(value, index++));
          // Parsing runs in microtasks, which never let other requests in: give the event loop a
          // turn every few records, so a large upload delays nobody by more than a few milliseconds.
          if (index % yieldEvery === 0) await new Promise((resolve) => setImmediate(resolve));
          if (batch.length === upsertPartSize) {
            yield { store: params.name, records: batch };
            batch = [];
          }
        }
        if (batch.length > 0 || index === 0) yield { store: params.name, records: batch };
      }
      // The client stream would report a failure of these generators as its own cancellation:
      // keep the edge's error to answer with it.
      let failure: unknown;
      const parts = mapErrors<MessageInitShape<typeof UpsertRecordsStreamRequestSchema>>(
        ndjson ? ndjsonStream() : jsonStream(),
        (e) => (failure = e),
      );
      let resp;
      try {
        resp = await datastore.upsertRecordsStream(parts, { headers });
      } catch (e) {
        throw failure ?? e;
      }
      sendJson(res, 200, { data: { upserted: resp.upserted, embedded: resp.embedded } });
    })
    .add("GET", "/v1/datastores/:name/records/:id", async (req, res, params) => {
      const resp = await datastore.getRecords({ store: params.name, ids: [params.id] }, { headers: callerHeaders(req) });
      const r = resp.records[0];
      if (!r) throw new ConnectError(`record '${params.id}' does not exist in datastore '${params.name}'`, Code.NotFound);
      sendJson(res, 200, { data: { id: r.id, text: r.text, metadata: r.metadata ?? {}, vector: r.vector } });
    })
    .add("DELETE", "/v1/datastores/:name/records/:id", async (req, res, params) => {
      const resp = await datastore.deleteRecords({ store: params.name, ids: [params.id] }, { headers: callerHeaders(req) });
      if (resp.deleted === 0) throw new ConnectError(`record '${params.id}' does not exist in datastore '${params.name}'`, Code.NotFound);
      sendJson(res, 200, { data: { id: params.id, deleted: true } });
    })
    .add("POST", "/v1/datastores/:name/search", async (req, res, params) => {
      const headers = callerHeaders(req);
      const body = await readJson(req, options.maxBodyBytes, maxJsonDepth);
      const mode = field.string(body, "mode") ?? "keyword";
      if (!(mode in searchModes)) throw new HttpError(400, searchModeProblem, "mode", "invalid_value");
      const vector = readVector(body.vector ?? []);
      if (!vector) throw new HttpError(400, `'vector' must be ${vectorForms}`, "vector", "invalid_type");
      const resp = await datastore.search(
        {
          store: params.name,
          query: field.string(body, "query") ?? "",
          vector,
          mode: searchModes[mode],
          filter: field.object(body, "filter") as JsonObject | undefined,
          limit: field.integer(body, "limit") ?? 0,
        },
        { headers },
      );
      sendJson(res, 200, { data: resp.records.map((r) => ({ id: r.id, text: r.text, metadata: r.metadata ?? {}, score: r.score })) });
    });
}
