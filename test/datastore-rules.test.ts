// The Datastore's field rules called directly: the refusals its handlers answer and the JSON
// records and search modes the REST edge reads with them. (The Executor's few invocation rules the
// edge shares are at the end.) The same refusals over RPC are in datastore.service.test.ts.
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { SearchMode } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { RunStatus } from "../gen/shaker/executor/v1/executor_pb.js";
import {
  checkQueryDimension,
  checkRecord,
  checkRecordDimension,
  checkSearch,
  checkStoreName,
  checkStoreRef,
  finiteNumbers,
  hybridDepth,
  readJsonRecord,
  readVector,
  type SearchFields,
  searchModeProblem,
  searchModes,
  searchPages,
  upsertPartSize,
  vectorForms,
} from "../services/datastore/rules.js";
import { checkRunPage, inputRequired, runPages, runStatuses } from "../services/executor/rules.js";
import { errorMetadata } from "../services/shared/errors.js";
import { namePattern } from "../services/shared/names.js";

/** refusal runs fn and returns the ConnectError it throws, with the field it names. */
function refusal(fn: () => unknown): { code: Code; message: string; param: string | null } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConnectError);
    const ce = e as ConnectError;
    return { code: ce.code, message: ce.rawMessage, param: ce.metadata.get(errorMetadata.param) };
  }
  throw new Error("expected a refusal, got none");
}

const invalid = (message: string, param: string) => ({ code: Code.InvalidArgument, message, param });

describe("store names", () => {
  it("a new store's name is a name", () => {
    for (const ok of ["docs", "my-store_2", "0"]) expect(() => checkStoreName(ok)).not.toThrow();
    for (const bad of ["", "Docs", "a b", "-x", "a".repeat(65)]) {
      expect(refusal(() => checkStoreName(bad))).toEqual(invalid(`'name' must match ${namePattern.source}`, "name"));
    }
  });

  it("a request must name its store", () => {
    expect(() => checkStoreRef("docs")).not.toThrow();
    expect(refusal(() => checkStoreRef(""))).toEqual(invalid("'store' is required", "store"));
  });
});

describe("records over RPC", () => {
  it("accepts a record with an id, with or without a vector", () => {
    expect(() => checkRecord({ id: "a", vector: [] }, 0)).not.toThrow();
    expect(() => checkRecord({ id: "a", vector: [0.5, -1, 0] }, 0)).not.toThrow();
  });

  it("refuses a record without an id, naming its index in the whole request", () => {
    expect(refusal(() => checkRecord({ id: "", vector: [] }, 1003))).toEqual(invalid("records[1003]: missing id", "records[1003].id"));
  });

  it("refuses a vector holding NaN or an infinity", () => {
    for (const x of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      expect(refusal(() => checkRecord({ id: "a", vector: new Float64Array([1, x]) }, 2))).toEqual(
        invalid("records[2]: vector holds a value that is not a finite number", "records[2].vector"),
      );
    }
  });

  it("refuses a vector whose dimension is not the store's", () => {
    expect(() => checkRecordDimension(3, 3, 0)).not.toThrow();
    expect(refusal(() => checkRecordDimension(2, 3, 7))).toEqual(
      invalid("records[7]: vector has 2 dimensions; the store's vectors have 3", "records[7].vector"),
    );
  });

  it("refuses a query vector whose dimension is not the store's; a store without vectors takes any", () => {
    expect(() => checkQueryDimension(5, 0)).not.toThrow();
    expect(() => checkQueryDimension(5, 5)).not.toThrow();
    expect(refusal(() => checkQueryDimension(4, 5))).toEqual(invalid("'vector' has 4 dimensions; the store's vectors have 5", "vector"));
  });
});

describe("records over REST (JSON)", () => {
  it("reads a record, defaulting text, metadata and vector, and taking a numeric id as text", () => {
    expect(readJsonRecord({ id: "a" })).toEqual({ id: "a", text: "", metadata: {}, vector: [] });
    expect(readJsonRecord({ id: 42, text: null, metadata: { k: 1 }, vector: [1, 2] })).toEqual({
      id: "42",
      text: "",
      metadata: { k: 1 },
      vector: [1, 2],
    });
  });

  it("names the problem and the field under records[i]", () => {
    const cases: [unknown, string, string][] = [
      [null, "must be a JSON object", ""],
      [[1], "must be a JSON object", ""],
      ["x", "must be a JSON object", ""],
      [{}, "missing id", ".id"],
      [{ id: "" }, "missing id", ".id"],
      [{ id: true }, "id must be a string", ".id"],
      [{ id: Number.NaN }, "id must be a string", ".id"],
      [{ id: "a", text: 3 }, "text must be a string", ".text"],
      [{ id: "a", metadata: [1] }, "metadata must be a JSON object", ".metadata"],
      [{ id: "a", metadata: "m" }, "metadata must be a JSON object", ".metadata"],
      [{ id: "a", vector: "1,2" }, `vector must be ${vectorForms}`, ".vector"],
      [{ id: "a", vector: [1, "2"] }, `vector must be ${vectorForms}`, ".vector"],
    ];
    for (const [value, problem, param] of cases) expect(readJsonRecord(value), JSON.stringify(value)).toEqual({ problem, param });
  });

  it("finiteNumbers is the one test of a vector", () => {
    expect(finiteNumbers([])).toBe(true);
    expect(finiteNumbers([0, -1.5, 1e300])).toBe(true);
    for (const bad of [undefined, null, "1", {}, [null], [Number.NaN], [Number.POSITIVE_INFINITY]]) expect(finiteNumbers(bad)).toBe(false);
  });

  it("reads a vector written out or as the base64 of its little-endian float32s, and nothing else", () => {
    const floats = new Float32Array([0.25, -1.5, Math.PI, 1e-8]);
    const b64 = Buffer.from(floats.buffer).toString("base64");
    expect(readVector(b64)).toEqual(Array.from(floats));
    expect(readVector([0.25, -1.5])).toEqual([0.25, -1.5]);
    expect(readVector("")).toEqual([]);
    expect(readJsonRecord({ id: "a", vector: b64 })).toMatchObject({ id: "a", vector: Array.from(floats) });
    // Base64 with bits set past the last byte ("w" is canonical here) reads as the same floats.
    expect(readVector("AACAPw==")).toEqual([1]);
    expect(readVector("AACAPx==")).toEqual([1]);
    const nan = Buffer.from(new Float32Array([1, Number.NaN]).buffer).toString("base64");
    const infinite = Buffer.from(new Float32Array([Number.POSITIVE_INFINITY]).buffer).toString("base64");
    // Not base64 (a space, a URL-safe character, missing padding), 2 or 6 bytes, or not finite.
    for (const bad of [`${b64} `, "AAAA-_AA", "AAAA AAAA", "AAA", "AAA=", "AAAAAAA=", nan, infinite, 12, null]) {
      expect(readVector(bad), String(bad)).toBeUndefined();
    }
  });

  it("an upload streams in parts of a thousand records", () => {
    expect(upsertPartSize).toBe(1000);
  });
});

describe("search", () => {
  const search = (fields: Partial<SearchFields>): SearchFields => ({
    mode: SearchMode.KEYWORD,
    query: "bread",
    vector: [],
    limit: 0,
    ...fields,
  });

  it("names its modes as REST does, and says so when one is unknown", () => {
    expect(searchModes).toEqual({ keyword: SearchMode.KEYWORD, vector: SearchMode.VECTOR, hybrid: SearchMode.HYBRID });
    expect(searchModeProblem).toBe("'mode' must be one of keyword, vector, hybrid");
  });

  it("defaults the limit to 10 and allows up to 1000", () => {
    expect(searchPages).toEqual({ defaultLimit: 10, maxLimit: 1000 });
    expect(checkSearch(search({})).limit).toBe(10);
    expect(checkSearch(search({ limit: 1000 })).limit).toBe(1000);
    for (const limit of [-1, 1001]) {
      expect(refusal(() => checkSearch(search({ limit })))).toEqual(invalid("'limit' must be between 1 and 1000", "limit"));
    }
  });

  it("parses the filter into conditions, refusing a bad one as 'filter'", () => {
    expect(checkSearch(search({ filter: { category: "food", price: { $lt: 20 } } })).conditions).toEqual([
      { path: ["category"], op: "eq", value: "food" },
      { path: ["price"], op: "lt", value: 20 },
    ]);
    expect(refusal(() => checkSearch(search({ filter: { price: { $near: 1 } } })))).toEqual(
      invalid("filter 'price' has unknown operator '$near'; use $eq, $ne, $in, $gt, $gte, $lt or $lte", "filter"),
    );
    expect(refusal(() => checkSearch(search({ filter: { price: { $gt: "1" } } })))).toEqual(
      invalid("filter 'price.$gt' must be a number", "filter"),
    );
  });

  it("each mode needs what it searches with", () => {
    expect(refusal(() => checkSearch(search({ query: "" })))).toEqual(invalid("keyword search needs a 'query'", "query"));
    expect(refusal(() => checkSearch(search({ mode: SearchMode.UNSPECIFIED, query: "" })))).toEqual(
      invalid("keyword search needs a 'query'", "query"),
    );
    expect(refusal(() => checkSearch(search({ mode: SearchMode.VECTOR, query: "" })))).toEqual(
      invalid("vector search needs 'vector' or a 'query' to embed", "vector"),
    );
    expect(refusal(() => checkSearch(search({ mode: SearchMode.HYBRID, query: "" })))).toEqual(
      invalid("hybrid search needs a 'query', a 'vector' or both", "query"),
    );
    for (const mode of [SearchMode.VECTOR, SearchMode.HYBRID]) {
      expect(() => checkSearch(search({ mode, query: "", vector: [1] }))).not.toThrow();
      expect(() => checkSearch(search({ mode }))).not.toThrow();
    }
  });

  it("checks the limit before the filter, and both before the mode's needs", () => {
    expect(refusal(() => checkSearch(search({ query: "", limit: -1, filter: { a: { $x: 1 } } }))).param).toBe("limit");
    expect(refusal(() => checkSearch(search({ query: "", filter: { a: { $x: 1 } } }))).param).toBe("filter");
  });

  it("a hybrid search fuses at least 50 hits of each ranking, three per result, at most 1000", () => {
    expect(hybridDepth(1)).toBe(50);
    expect(hybridDepth(20)).toBe(60);
    expect(hybridDepth(1000)).toBe(1000);
  });
});

describe("the Executor's rules the edge shares", () => {
  it("pages run listings by 20, at most 100", () => {
    expect(runPages).toEqual({ defaultLimit: 20, maxLimit: 100 });
    expect(checkRunPage(0, 0)).toBe(20);
    expect(checkRunPage(5, 100)).toBe(100);
    expect(refusal(() => checkRunPage(-1, 0))).toEqual(invalid("offset must be 0 or more", "offset"));
    expect(refusal(() => checkRunPage(0, 101))).toEqual(invalid("limit must be between 1 and 100", "limit"));
    expect(refusal(() => checkRunPage(0, -1))).toEqual(invalid("limit must be between 1 and 100", "limit"));
  });

  it("names run statuses as REST callers spell them", () => {
    expect(runStatuses).toEqual({
      queued: RunStatus.QUEUED,
      running: RunStatus.RUNNING,
      succeeded: RunStatus.SUCCEEDED,
      failed: RunStatus.FAILED,
      timed_out: RunStatus.TIMED_OUT,
      cancelled: RunStatus.CANCELLED,
    });
  });

  it("an invocation needs messages or input", () => {
    expect(inputRequired).toBe("either 'messages' or 'input' is required");
  });
});
