import { describe, expect, it } from "vitest";
import { blank, parseRecordJson } from "../services/datastore/record-json.js";
import {
  checkEmbeddings,
  filled,
  type NdjsonRead,
  type RecordPack,
  readNdjson,
  recordsOf,
  textOf,
} from "../services/datastore/record-pack.js";
import { vectorForms } from "../services/datastore/rules.js";

const lines = (...values: unknown[]) => Buffer.from(values.map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join("\n"));

function packOf(read: NdjsonRead): { pack: RecordPack; missing: number[] } {
  if ("error" in read) throw new Error(`refused: ${read.error.message}`);
  return read;
}

function errorOf(read: NdjsonRead) {
  if (!("error" in read)) throw new Error("read, not refused");
  return read.error;
}

/** f32 is a vector as the float32s a store keeps. */
const f32 = (v: number[]) => Array.from(Float32Array.from(v));

describe("readNdjson", () => {
  it("reads records into a pack that unpacks to them, blank lines skipped", () => {
    const base64 = Buffer.from(Float32Array.from([0.5, -1, 2]).buffer).toString("base64");
    const long = Array.from({ length: 40 }, (_, i) => i / 7);
    const body = Buffer.concat([
      Buffer.from("\r\n  \t\n"),
      lines(
        { id: "a", text: "é ☃ 𝄞 emoji 😀", metadata: { nested: { list: [1, "]"] } }, vector: [0.1, 0.2, 0.3] },
        "   ",
        { id: 7, vector: base64 },
        "\u00a0\u2003",
        // Long enough for its vector to be read from its bytes (record-json.ts).
        { id: "long", text: "t".repeat(300), vector: long.slice(0, 3) },
      ),
      Buffer.from("\r\n\r\n"),
    ]);
    const { pack, missing } = packOf(readNdjson(body, 0, 0, 64));
    expect(missing).toEqual([]);
    expect(pack.n).toBe(3);
    expect(pack.dimension).toBe(3);
    // Trimmed to the records read: blank lines take no room in what crosses threads.
    expect(pack.vectors.length).toBe(9);
    const records = recordsOf(pack);
    expect(records.map((r) => ({ ...r, vector: Array.from(r.vector) }))).toEqual([
      { id: "a", text: "é ☃ 𝄞 emoji 😀", metadata: '{"nested":{"list":[1,"]"]}}', vector: f32([0.1, 0.2, 0.3]) },
      { id: "7", text: "", metadata: "{}", vector: [0.5, -1, 2] },
      { id: "long", text: "t".repeat(300), metadata: "{}", vector: f32(long.slice(0, 3)) },
    ]);
    expect(textOf(pack, 0)).toBe("é ☃ 𝄞 emoji 😀");
    // Records one by one are passed as they are.
    expect(recordsOf(records)).toBe(records);
  });

  it("says which records have no vector, and fills them with their embeddings, checked", () => {
    const { pack, missing } = packOf(
      readNdjson(lines({ id: "a", vector: [1, 0] }, { id: "b", text: "embed me" }, { id: "c", vector: [0, 1] }), 0, 0, 64),
    );
    expect(missing).toEqual([1]);
    expect(textOf(pack, 1)).toBe("embed me");
    const fill = checkEmbeddings(missing, [[0.5, 0.5]], pack.dimension, 10);
    expect(recordsOf(filled(pack, fill)).map((r) => Array.from(r.vector))).toEqual([
      [1, 0],
      [0.5, 0.5],
      [0, 1],
    ]);
    expect(() => checkEmbeddings(missing, [[1, 2, 3]], pack.dimension, 10)).toThrow(
      "records[11]: vector has 3 dimensions; the store's vectors have 2",
    );
    expect(() => checkEmbeddings(missing, [[1e39, 0]], pack.dimension, 10)).toThrow(
      "records[11]: vector holds a value beyond a float32's range",
    );

    // No vector at all: the embeddings give the dimension.
    const none = packOf(readNdjson(lines({ id: "x", text: "one" }, { id: "y", text: "two" }), 0, 0, 64));
    expect(none.pack.dimension).toBe(0);
    expect(none.missing).toEqual([0, 1]);
    const embedded = filled(
      none.pack,
      checkEmbeddings(
        none.missing,
        [
          [1, 2, 3, 4],
          [5, 6, 7, 8],
        ],
        0,
        0,
      ),
    );
    expect(embedded.dimension).toBe(4);
    expect(recordsOf(embedded).map((r) => Array.from(r.vector))).toEqual([
      [1, 2, 3, 4],
      [5, 6, 7, 8],
    ]);
  });

  it("refuses the first bad record, named by its index in the request (blank lines not counted)", () => {
    const good = { id: "ok", vector: [1, 2, 3] };
    const cases: [Buffer, number, { message: string | RegExp; param: string; code?: string }][] = [
      [
        lines(good, "", "{not json"),
        5,
        { message: /^records\[6\]: line is not valid JSON: /, param: "records[6]", code: "invalid_record" },
      ],
      [lines(good, { text: "no id" }), 0, { message: "records[1]: missing id", param: "records[1].id", code: "invalid_record" }],
      [lines([1, 2]), 0, { message: "records[0]: must be a JSON object", param: "records[0]", code: "invalid_record" }],
      [
        lines({ id: "m", metadata: [1] }),
        0,
        { message: "records[0]: metadata must be a JSON object", param: "records[0].metadata", code: "invalid_record" },
      ],
      [
        lines({ id: "v", vector: [1, "a"] }),
        0,
        { message: `records[0]: vector must be ${vectorForms}`, param: "records[0].vector", code: "invalid_record" },
      ],
      [
        lines({ id: "deep", metadata: { a: { b: { c: {} } } } }),
        0,
        { message: "records[0]: the line nests deeper than 3 levels", param: "records[0]", code: "nested_too_deep" },
      ],
      // The rules' own errors (as for records sent one by one) carry no REST code of their own.
      [
        lines(good, { id: "n\u0000ul" }),
        0,
        { message: "records[1]: id must not contain the NUL character (\\u0000)", param: "records[1].id" },
      ],
      [
        lines(good, { id: "short", vector: [1, 2] }),
        0,
        { message: "records[1]: vector has 2 dimensions; the store's vectors have 3", param: "records[1].vector" },
      ],
      [
        lines({ id: "far", vector: [1, -1e39, 0] }),
        0,
        { message: "records[0]: vector holds a value beyond a float32's range (±3.4e38)", param: "records[0].vector" },
      ],
    ];
    for (const [body, first, want] of cases) {
      const error = errorOf(readNdjson(body, first, 0, 3));
      expect(error.message).toMatch(want.message);
      expect(error).toMatchObject({ param: want.param });
      expect(error.code).toBe(want.code);
    }
    // The store's dimension applies from the first record.
    expect(errorOf(readNdjson(lines(good), 0, 384, 64)).message).toBe("records[0]: vector has 3 dimensions; the store's vectors have 384");
  });

  it("counts as blank exactly the lines a record's parse finds blank", () => {
    for (const line of ["", " ", "\t\r", "\u00a0", "\u2003 \ufeff", "\u000b\u000c", " x", "\u00e9", "{}", "\u00a0{}"]) {
      const bytes = Buffer.from(line);
      let parsed: unknown;
      try {
        parsed = parseRecordJson(bytes, 64);
      } catch {
        parsed = "not JSON";
      }
      expect(blank(bytes), JSON.stringify(line)).toBe(parsed === undefined);
      // A range of a larger buffer, as the edge and the reader look at lines.
      const inside = Buffer.concat([Buffer.from("{}\n"), bytes, Buffer.from("\n{}")]);
      expect(blank(inside, 3, 3 + bytes.length)).toBe(parsed === undefined);
    }
  });
});
