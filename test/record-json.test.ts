import { describe, expect, it } from "vitest";
import { NestsTooDeep, parseRecordJson } from "../services/datastore/record-json.js";

/** What the store kept of a JSON record before: JSON.parse of the trimmed text, its vector (when an array of numbers) as float32s. */
function kept(text: string): unknown {
  const value = JSON.parse(text.trim());
  if (Array.isArray(value?.vector) && value.vector.every((x: unknown) => typeof x === "number")) {
    value.vector = Array.from(new Float32Array(value.vector));
  }
  return value;
}

function read(text: string, maxDepth = 64): unknown {
  const value = parseRecordJson(Buffer.from(text), maxDepth) as { vector?: unknown } | undefined;
  if (Array.isArray(value?.vector) && value.vector.every((x: unknown) => typeof x === "number")) {
    value.vector = Array.from(new Float32Array(value.vector as number[]));
  }
  return value;
}

/** Leading white space, which JSON allows: past 300 bytes a record's vector is read from its bytes; a shorter record goes to JSON.parse whole. */
const pad = " ".repeat(300);

/** sameAs says that a record reads as JSON.parse and a Float32Array read it, to the bit (-0 included), short or long. */
function sameAs(text: string): void {
  sameAsOnce(text);
  sameAsOnce(pad + text);
}

function sameAsOnce(text: string): void {
  const got = read(text) as { vector?: number[] };
  const want = kept(text) as { vector?: number[] };
  expect(got, text.slice(0, 200)).toEqual(want);
  if (Array.isArray(want.vector) && want.vector.every((x) => typeof x === "number")) {
    for (const [i, x] of want.vector.entries()) expect(Object.is(got.vector![i], x), `${text.slice(0, 80)} [${i}]`).toBe(true);
  }
}

describe("a record's JSON, its vector read from the bytes", () => {
  it("reads every way a number is written as JSON.parse then a Float32Array would", () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 16807) % 2147483647;
      return seed / 2147483647;
    };
    const writers: ((x: number) => string)[] = [
      (x) => String(Math.round(x * 1e6) / 1e6), // six places
      (x) => String(Math.fround(x)), // a float32's shortest double
      (x) => String(x), // a double's shortest (17 digits)
      (x) => (x / 1e5).toExponential(12), // 1.234567890123e-6
      (x) => (x * 1e8).toExponential(3).replace("e+", "E+"), // 1.234E+7
      (x) => x.toFixed(25), // more digits than a double holds
      (x) => String(Math.round(x * 1e3)), // integers
      (x) => String(BigInt(Math.round(x * 1e6)) * 10n ** 15n), // integers past 2^53
    ];
    for (const write of writers) {
      for (let r = 0; r < 50; r++) {
        const numbers = Array.from({ length: 64 }, () => write(random() * 2 - 1));
        sameAs(`{"id":"r${r}","text":"t","metadata":{"n":${r}},"vector":[${numbers.join(",")}]}`);
      }
    }
  });

  it("reads edge numbers as JSON.parse would: zeros, float32's limits, and the ones a double then a float32 round twice", () => {
    const edges = [
      "0",
      "-0",
      "0.0",
      "-0.0e5",
      "1e-50", // below float32's least: 0
      "1.401298464324817e-45", // float32's least subnormal
      "3.4028234663852886e38", // float32's largest
      "3.4028235677973366e38", // rounds down to it
      "1.000000059604644775390625", // exactly between 1 and the next float32: ties to even, 1
      "1.0000000596046447753906251", // a hair above, but its double is the tie: still 1
      "1.00000005960464477539062501e0",
      "123456789012345678901234567890e-29",
      "0.000000000000000000000000000000000000000000123",
      "1E400", // beyond a double's range: JSON.parse reads Infinity, kept as such, refused later
    ];
    for (const e of edges) sameAs(`{"id":"e","vector":[${e}, ${e},${e.startsWith("-") ? e.slice(1) : `-${e}`}]}`);
    // A value beyond a float32's range is left to JSON.parse: the double is kept, for the service to refuse by name.
    expect((read('{"id":"x","vector":[1, 1e39]}') as { vector: number[] }).vector).toEqual([1, Number.POSITIVE_INFINITY]);
    expect((parseRecordJson(Buffer.from('{"id":"x","vector":[1, 1e39]}'), 64) as { vector: number[] }).vector).toEqual([1, 1e39]);
  });

  it("reads the record's structure as JSON.parse does", () => {
    for (const text of [
      '{"id":"a","vector":[]}',
      '{"id":"a","vector":[ ]}',
      ' \t{ "vector" : [ 1 , 2.5 ,\r\n -3 ] , "id" : "a" } ',
      '{"id":"a","text":"\\"vector\\":[9]","vector":[1]}', // the key inside a string
      '{"id":"a","metadata":{"vector":[7,8]},"vector":[1,2]}', // a nested "vector" left alone
      '{"id":"a","metadata":{"vector":[7,8]}}',
      '{"id":"a","vector":[1],"vector":[2,3]}', // the last of a key written twice wins
      '{"id":"a","vector":[1],"vector":"AACAPw=="}',
      '{"id":"a","vector":"AACAPw==","vector":[4]}',
      '{"id":"a","vec\\u0074or":[5],"vector":[1]}', // a key written with an escape
      '{"id":"a","vector":[1],"vec\\u0074or":[5]}',
      '{"id":"a","vector":"AACAPw=="}',
      '{"id":"a","vector":[1,"2"]}',
      '{"id":"a","vector":[1,[2]]}',
      '{"id":"a","vector":[1,null]}',
      '{"id":"a","vector":null}',
      '{"id":"é ☃ 𝄞","text":"ünïcode \\u00e9","vector":[0.5]}',
      "[1,2]",
      "12",
      '"vector"',
      '\uFEFF{"id":"bom","vector":[1]}',
    ]) {
      sameAs(text);
    }
  });

  it("reads a top-level vector of numbers itself, as float32s, and leaves the rest to JSON.parse", () => {
    const raw = (text: string) => parseRecordJson(Buffer.from(pad + text), 64) as { vector: unknown; metadata?: { vector: unknown } };
    // JSON.parse would give the double 0.1; the store keeps the float32 nearest it.
    expect(raw('{"id":"a","metadata":{"vector":[0.1]},"vector":[0.1, 2]}')).toEqual({
      id: "a",
      metadata: { vector: [0.1] },
      vector: [Math.fround(0.1), 2],
    });
    expect(raw('{"id":"a","vector":[0.1, "x"]}').vector).toEqual([0.1, "x"]);
    expect(raw('{"id":"a","vector":[0.1],"vector":"AACAPw=="}').vector).toBe("AACAPw==");
    // A short record is JSON.parse's whole: its vector too short to gain from being read here.
    expect((parseRecordJson(Buffer.from('{"id":"a","vector":[0.1]}'), 64) as { vector: number[] }).vector).toEqual([0.1]);
  });

  it("says nothing of a blank line, and refuses what JSON.parse refuses with its message for the text as sent", () => {
    expect(parseRecordJson(Buffer.from(" \t\r"), 64)).toBeUndefined();
    expect(parseRecordJson(Buffer.from(""), 64)).toBeUndefined();
    for (const text of [
      '{"id":"a","vector":[01]}',
      '{"id":"a","vector":[1.]}',
      '{"id":"a","vector":[.5]}',
      '{"id":"a","vector":[+1]}',
      '{"id":"a","vector":[1e]}',
      '{"id":"a","vector":[1,]}',
      '{"id":"a","vector":[1 2]}',
      '{"id":"a","vector":[NaN]}',
      '{"id":"a","vector":[1]',
      '{"id":"a","vector":[1]}}',
      '{"id":"a" "vector":[1]}',
      '{"id":"a","vector":[1],}',
      '{"id":"a,"vector":[1]}',
      "{not json",
    ]) {
      let want = "";
      try {
        JSON.parse(text);
      } catch (e) {
        want = (e as Error).message;
      }
      expect(want, text).not.toBe("");
      for (const sent of [text, pad + text]) expect(() => parseRecordJson(Buffer.from(sent), 64), text).toThrow(new SyntaxError(want));
    }
  });

  it("refuses a record nesting deeper than allowed, wherever it does", () => {
    const deep = (n: number) => `${"[".repeat(n)}${"]".repeat(n)}`;
    for (const p of ["", pad]) {
      const parse = (text: string, max: number) => parseRecordJson(Buffer.from(p + text), max);
      expect(() => parse(`{"id":"a","metadata":{"x":${deep(63)}},"vector":[1]}`, 64)).toThrow(NestsTooDeep);
      expect(parse(`{"id":"a","metadata":{"x":${deep(62)}},"vector":[1]}`, 64)).toMatchObject({ vector: [1] });
      expect(() => parse('{"id":"a","vector":[1]}', 1)).toThrow(NestsTooDeep);
      expect(parse('{"id":"a","vector":[1]}', 2)).toMatchObject({ vector: [1] });
      // Deep and broken: the depth is what is said.
      expect(() => parse(`{"id":${deep(70).slice(0, 70)}`, 64)).toThrow(NestsTooDeep);
    }
  });

  it("reads a long vector past its first buffer, and the next record's shorter one whole", () => {
    const long = Array.from({ length: 10_000 }, (_, i) => (i % 7) / 8);
    sameAs(`{"id":"long","vector":[${long.join(",")}]}`);
    sameAs('{"id":"short","vector":[0.25,0.5]}');
  });
});
