// services/datastore/search-encoding.ts writes a SearchResponse without protobuf-es's reflection: its
// bytes must be toBinary's, byte for byte, for any hits and any JSON metadata, and decode back.
import { create, fromBinary, type JsonObject, type JsonValue, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { SearchResponseSchema } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { encodeSearchResponse } from "../services/datastore/search-encoding.js";

let seed = 5;
const random = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31;
};
const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)];
const strings = ["", "a", "en", "déjà vu", "日本語", "emoji 😀", "line\nbreak", 'quote"s', "x".repeat(300), "\u0000nul"];
const numbers = [0, -0, 1, -1, 0.1, 1e300, -2.5e-308, 2 ** 53, 123456789.125];

function value(depth: number): JsonValue {
  switch (Math.floor(random() * (depth > 2 ? 4 : 6))) {
    case 0:
      return null;
    case 1:
      return pick(numbers);
    case 2:
      return pick(strings);
    case 3:
      return random() < 0.5;
    case 4:
      return Array.from({ length: Math.floor(random() * 4) }, () => value(depth + 1));
    default:
      return object(depth + 1);
  }
}

function object(depth: number): JsonObject {
  const out: JsonObject = {};
  // keys of every kind, integer-like ones included (JavaScript iterates those first)
  for (let i = 0, n = Math.floor(random() * 5); i < n; i++) out[pick(["n", "lang", "tags", "10", "2", "ключ", "", "a.b"])] = value(depth);
  return out;
}

function hits(n: number) {
  return Array.from({ length: n }, () => ({
    id: pick(strings),
    text: pick(strings),
    ...(random() < 0.8 ? { metadata: object(0) } : {}),
    score: pick([...numbers, 0.73, -3.2, Number.NaN]),
  }));
}

describe("the SearchResponse encoding", () => {
  it("gives toBinary's bytes for any hits and metadata", () => {
    for (let round = 0; round < 500; round++) {
      const message = create(SearchResponseSchema, { records: hits(Math.floor(random() * 12)) });
      const want = toBinary(SearchResponseSchema, message);
      const got = encodeSearchResponse(message);
      expect(Buffer.from(got).equals(Buffer.from(want)), `round ${round}: ${JSON.stringify(message.records)}`).toBe(true);
    }
  });

  it("decodes back to the same hits", () => {
    const metadata: JsonObject = { n: 1, nested: { list: [1, "two", null, false, { deep: [] }] }, empty: {}, 日本: "語" };
    const records = [
      { id: "k1", text: "a record", metadata, score: 0.5 },
      { id: "k2", text: "", score: 0 },
      { id: "k3", text: "t", metadata: {}, score: -1 },
    ];
    const decoded = fromBinary(SearchResponseSchema, encodeSearchResponse(create(SearchResponseSchema, { records })));
    expect(decoded.records.map(({ id, text, metadata, score }) => ({ id, text, metadata, score }))).toEqual([
      records[0],
      { id: "k2", text: "", metadata: undefined, score: 0 },
      records[2],
    ]);
  });

  it("writes nothing for an empty answer", () => {
    expect(encodeSearchResponse(create(SearchResponseSchema, { records: [] }))).toHaveLength(0);
  });
});
