// The Datastore's field rules: what a store name, a record and a search may carry. The Datastore's
// handlers enforce them; the REST edge reads JSON records and search modes with the same rules and
// sizes its streamed upserts from here.
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { SearchMode } from "../../gen/shaker/datastore/v1/datastore_pb.js";
import { invalidArgument as invalid } from "../shared/errors.js";
import { namePattern } from "../shared/names.js";
import { type Condition, FilterError, parseFilter } from "./filter.js";

/** The sizes of a search: the default limit when a search asks for none, and the most it may ask for. */
export const searchPages = { defaultLimit: 10, maxLimit: 1000 };

/** upsertPartSize is how many records one UpsertRecordsStream message carries when the edge streams an upload. */
export const upsertPartSize = 1000;

/** searchModes are the names of the search modes in a REST search body. */
export const searchModes: Readonly<Record<string, SearchMode>> = {
  keyword: SearchMode.KEYWORD,
  vector: SearchMode.VECTOR,
  hybrid: SearchMode.HYBRID,
};

/** searchModeProblem is what the edge answers for a mode that is not one of searchModes. */
export const searchModeProblem = `'mode' must be one of ${Object.keys(searchModes).join(", ")}`;

/** finiteNumbers says whether a value is an array of finite numbers (the only vectors a store keeps). */
export function finiteNumbers(value: unknown): value is number[] {
  return Array.isArray(value) && value.every((x) => typeof x === "number" && Number.isFinite(x));
}

/** A vector as JSON may carry it: an array of finite numbers, or the base64 of its float32s. */
export const vectorForms = "an array of finite numbers, or the base64 of its little-endian float32s";

const base64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * readVector reads a vector from JSON: an array of finite numbers, or a string holding the base64
 * of its little-endian float32s, as OpenAI's embeddings answer with `encoding_format: "base64"`
 * (384 of them read in about 4 µs; written out, 15 to 27 µs from an upload's bytes, see
 * datastore/record-json.ts, and 20 to 40 through JSON.parse). Undefined when it is neither, or a float is
 * not finite.
 */
export function readVector(value: unknown): number[] | undefined {
  if (typeof value !== "string") return finiteNumbers(value) ? value : undefined;
  const bytes = Buffer.from(value, "base64");
  // Encoding the bytes again tells a canonical string in 1.7 µs where the expression takes 12.6
  // (384 floats); only a string that is not (trailing bits set, or not base64) meets the expression.
  if (bytes.toString("base64") !== value && !base64.test(value)) return undefined;
  if (bytes.byteLength % 4 !== 0) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Array<number>(bytes.byteLength / 4);
  for (let i = 0; i < out.length; i++) {
    const x = view.getFloat32(i * 4, true);
    if (!Number.isFinite(x)) return undefined;
    out[i] = x;
  }
  return out;
}

/** checkStoreName refuses a new store's name that is not a valid name. */
export function checkStoreName(name: string): void {
  if (!namePattern.test(name)) throw invalid(`'name' must match ${namePattern.source}`, "name");
}

/** checkStoreRef refuses a request that names no store. */
export function checkStoreRef(name: string): void {
  if (!name) throw invalid("'store' is required", "store");
}

/** A record's problem: what is wrong, and the field under `records[i]` at fault ("" for the record itself). */
export interface RecordProblem {
  problem: string;
  param: string;
}

/** A record read from JSON, as the edge passes it on. */
export interface JsonRecord {
  id: string;
  text: string;
  metadata: JsonObject;
  vector: number[];
}

/**
 * readJsonRecord checks one JSON record of a REST upload: the record, or the problem with it.
 * A numeric id is taken as its decimal text.
 */
export function readJsonRecord(value: unknown): JsonRecord | RecordProblem {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return { problem: "must be a JSON object", param: "" };
  const r = value as Record<string, unknown>;
  if (r.id === undefined || r.id === null || r.id === "") return missingId;
  const id = typeof r.id === "number" && Number.isFinite(r.id) ? String(r.id) : r.id;
  if (typeof id !== "string") return { problem: "id must be a string", param: ".id" };
  if (r.text !== undefined && r.text !== null && typeof r.text !== "string") return { problem: "text must be a string", param: ".text" };
  const metadata = r.metadata ?? {};
  if (typeof metadata !== "object" || Array.isArray(metadata)) return { problem: "metadata must be a JSON object", param: ".metadata" };
  const vector = readVector(r.vector ?? []);
  if (!vector) return { problem: `vector must be ${vectorForms}`, param: ".vector" };
  return { id, text: (r.text as string | undefined) ?? "", metadata: metadata as JsonObject, vector };
}

const missingId: RecordProblem = { problem: "missing id", param: ".id" };

/** recordError is the InvalidArgument error of record `i`'s problem. */
function recordError(i: number, { problem, param }: RecordProblem) {
  return invalid(`records[${i}]: ${problem}`, `records[${i}]${param}`);
}

/**
 * nul is the one character no text a store keeps may hold: PostgreSQL's text and jsonb refuse it, so
 * both databases refuse it alike, naming the field.
 */
const nul = "\0";
const nulProblem = "must not contain the NUL character (\\u0000)";

/** holdsNul says whether a JSON value has the NUL character in a string or a key. */
function holdsNul(v: JsonValue): boolean {
  if (typeof v === "string") return v.includes(nul);
  if (Array.isArray(v)) return v.some(holdsNul);
  if (v !== null && typeof v === "object") return Object.entries(v).some(([k, x]) => k.includes(nul) || holdsNul(x));
  return false;
}

/** checkText refuses a string field holding the NUL character. */
export function checkText(value: string, param: string): void {
  if (value.includes(nul)) throw invalid(`'${param}' ${nulProblem}`, param);
}

/** checkIds refuses record ids (of a get or a delete) holding the NUL character: no record has one. */
export function checkIds(ids: string[]): void {
  for (const [i, id] of ids.entries()) checkText(id, `ids[${i}]`);
}

/**
 * checkRecord refuses an RPC record (index `i` of the whole request) without an id, with a
 * non-finite vector value, or with the NUL character in its id, text or metadata.
 */
export function checkRecord(r: { id: string; text?: string; metadata?: JsonObject; vector: ArrayLike<number> }, i: number): void {
  if (!r.id) throw recordError(i, missingId);
  for (const [field, value] of [
    ["id", r.id],
    ["text", r.text ?? ""],
    ["metadata", r.metadata ?? {}],
  ] as const) {
    if (holdsNul(value)) throw recordError(i, { problem: `${field} ${nulProblem}`, param: `.${field}` });
  }
  for (let d = 0; d < r.vector.length; d++) {
    if (!Number.isFinite(r.vector[d]))
      throw recordError(i, { problem: "vector holds a value that is not a finite number", param: ".vector" });
  }
}

/**
 * checkFloat32s refuses record `i`'s vector, as the float32s a store keeps, when one is not finite:
 * a finite number beyond a float32's range (checkRecord has refused the others) would be kept as
 * Infinity, and every cosine with it would be NaN.
 */
export function checkFloat32s(vector: Float32Array, i: number): void {
  for (let d = 0; d < vector.length; d++) {
    if (!Number.isFinite(vector[d]))
      throw recordError(i, { problem: "vector holds a value beyond a float32's range (±3.4e38)", param: ".vector" });
  }
}

/** checkRecordDimension refuses record `i`'s vector of `got` dimensions in a store whose vectors have `want`. */
export function checkRecordDimension(got: number, want: number, i: number): void {
  if (got !== want) throw recordDimensionError(got, want, i);
}

/** recordDimensionError is the error of record `i`'s vector of `got` dimensions in a store whose vectors have `want`. */
export function recordDimensionError(got: number, want: number, i: number) {
  return recordError(i, { problem: `vector has ${got} dimensions; the store's vectors have ${want}`, param: ".vector" });
}

/** checkQueryDimension refuses a search vector whose dimension is not the store's (a store with no vectors yet takes any). */
export function checkQueryDimension(got: number, want: number): void {
  if (want && got !== want) throw invalid(`'vector' has ${got} dimensions; the store's vectors have ${want}`, "vector");
}

/** A search's fields as the rules read them. */
export interface SearchFields {
  mode: SearchMode;
  query: string;
  vector: ArrayLike<number>;
  limit: number;
  filter?: JsonObject;
}

/**
 * checkSearch refuses a search whose limit is out of bounds, whose filter is not one, or whose mode
 * lacks what it searches with. It returns the limit to use and the filter's conditions.
 */
export function checkSearch(req: SearchFields): { limit: number; conditions: Condition[] } {
  if (req.limit < 0 || req.limit > searchPages.maxLimit) throw invalid(`'limit' must be between 1 and ${searchPages.maxLimit}`, "limit");
  let conditions: Condition[];
  try {
    conditions = parseFilter(req.filter);
  } catch (e) {
    if (e instanceof FilterError) throw invalid(e.message, "filter");
    throw e;
  }
  switch (req.mode) {
    case SearchMode.VECTOR:
      if (req.vector.length === 0 && !req.query) throw invalid("vector search needs 'vector' or a 'query' to embed", "vector");
      break;
    case SearchMode.HYBRID:
      if (!req.query && req.vector.length === 0) throw invalid("hybrid search needs a 'query', a 'vector' or both", "query");
      break;
    default:
      if (!req.query) throw invalid("keyword search needs a 'query'", "query");
  }
  return { limit: req.limit || searchPages.defaultLimit, conditions };
}

/** hybridDepth is how many hits each ranking of a hybrid search contributes before fusion. */
export function hybridDepth(limit: number): number {
  return Math.min(Math.max(limit * 3, 50), searchPages.maxLimit);
}
