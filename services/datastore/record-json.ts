// One record of an upload, read from its JSON bytes (an NDJSON line, or an element of a body's
// "records"): JSON.parse for everything but the numbers of its top-level "vector", which are read
// here, straight from the bytes, as the float32s the store will keep. Decoding a record of 384
// numbers and JSON.parse took about 21 µs at six places and 41 at seventeen digits (what
// JSON.stringify and Python write), most of it reading the numbers, on an event loop that shares two
// cores with the writer thread's index update; read here, 15 and 27 (exp, the whole record).
//
// Anything unusual (no such vector, a vector that is not an array of plain numbers, a key written
// with escapes, the key twice, a value beyond a float32's range) is read by JSON.parse whole, so
// what is accepted, refused and kept is what JSON.parse then a Float32Array give.

import { nestsDeeperThan } from "../shared/json.js";

/** NestsTooDeep is thrown for a record whose arrays and objects nest deeper than allowed. */
export class NestsTooDeep extends Error {}

const [TAB, NEWLINE, RETURN, SPACE, QUOTE, PLUS, COMMA, MINUS, DOT, COLON] = [9, 10, 13, 32, 34, 43, 44, 45, 46, 58];
const [ZERO, NINE, UPPER_E, LOWER_E, BACKSLASH] = [48, 57, 69, 101, 92];
const [OPEN_BRACKET, CLOSE_BRACKET, OPEN_BRACE, CLOSE_BRACE] = [91, 93, 123, 125];
const vectorKey = Buffer.from("vector");

/** Powers of ten a double holds exactly: a product or quotient with one is correctly rounded. */
const exactPowers = Array.from({ length: 23 }, (_, i) => 10 ** i);
/** An integer below this is exact as a double. */
const exactBelow = 2 ** 53;
/**
 * How far (relatively) every float32 rounding boundary must be from an approximation of a number
 * with more digits than a double holds: its error is a few units in the 53rd bit, the double
 * JSON.parse reads is within half a unit of the exact value, so both round to the same float32.
 */
const margin = 2 ** -40;

/**
 * A record shorter than this goes to JSON.parse whole: its vector, if any, is too short to gain (exp,
 * per record: 16 numbers in 207 bytes 1.80 µs read here against 1.60; 32 in 358 bytes 2.32 against
 * 2.54; a keyword record with a 4-number vector 1.43 against 0.92).
 */
const fastFrom = 300;

const space = (c: number) => c === SPACE || c === TAB || c === NEWLINE || c === RETURN;
const digit = (c: number) => c >= ZERO && c <= NINE;

/**
 * blank says whether bytes[from, to) are only white space, as String.prototype.trim counts it (a
 * blank NDJSON line, skipped): the edge, cutting an upload into parts, and the reader agree on it.
 */
export function blank(b: Uint8Array, from = 0, to = b.length): boolean {
  for (let i = from; i < to; i++) {
    const c = b[i];
    if (c === SPACE || (c >= TAB && c <= RETURN)) continue;
    return c < 0x80
      ? false
      : Buffer.from(b.buffer, b.byteOffset + from, to - from)
          .toString("utf8")
          .trim() === "";
  }
  return true;
}

/**
 * parseRecordJson parses one record's JSON, as JSON.parse would but with a top-level "vector" of
 * numbers read as the float32s it will be kept as. Undefined when the bytes are only white space (as
 * String.prototype.trim counts it); JSON.parse's SyntaxError when they are not JSON; NestsTooDeep
 * past `maxDepth` levels of arrays and objects.
 */
export function parseRecordJson(bytes: Buffer, maxDepth: number): unknown {
  const fast = bytes.length >= fastFrom ? vectorAt(bytes, maxDepth) : undefined;
  if (fast) {
    try {
      const value = JSON.parse(`${bytes.toString("utf8", 0, fast.start)}0${bytes.toString("utf8", fast.end)}`);
      if (value.vector === 0) {
        value.vector = fast.numbers;
        return value;
      }
    } catch {
      // Not JSON: JSON.parse says where, of the text as sent.
    }
  }
  const text = bytes.toString("utf8").trim();
  if (!text) return undefined;
  if (nestsDeeperThan(text, maxDepth)) throw new NestsTooDeep();
  return JSON.parse(text);
}

/** closingQuote finds the quote closing the string opened at b[open] (one not escaped); -1 when there is none. */
function closingQuote(b: Buffer, open: number): number {
  let end = open;
  for (;;) {
    end = b.indexOf(QUOTE, end + 1);
    if (end < 0) return -1;
    let backslashes = 0;
    while (b[end - 1 - backslashes] === BACKSLASH) backslashes++;
    if (backslashes % 2 === 0) return end;
  }
}

/**
 * vectorAt finds a record's one top-level "vector" whose value is an array of numbers, and reads
 * them: where the array starts and ends in the bytes. Undefined when the record is not so simple
 * (JSON.parse then reads it all); NestsTooDeep when the walk finds it nests too deep.
 */
function vectorAt(b: Buffer, maxDepth: number): { start: number; end: number; numbers: number[] } | undefined {
  let i = 0;
  while (space(b[i])) i++;
  if (b[i] !== OPEN_BRACE) return undefined;
  let found: { start: number; end: number; numbers: number[] } | undefined;
  let depth = 0;
  let keyNext = false;
  for (; i < b.length; i++) {
    const c = b[i];
    if (c === QUOTE) {
      const end = closingQuote(b, i);
      if (end < 0) return undefined;
      if (depth === 1 && keyNext) {
        keyNext = false;
        // A key written with escapes might read as "vector": JSON.parse decides.
        for (let k = i + 1; k < end; k++) if (b[k] === BACKSLASH) return undefined;
        if (end - i - 1 === vectorKey.length && b.compare(vectorKey, 0, vectorKey.length, i + 1, end) === 0) {
          let j = end + 1;
          while (space(b[j])) j++;
          if (b[j] !== COLON) return undefined;
          j++;
          while (space(b[j])) j++;
          if (b[j] === OPEN_BRACKET) {
            if (found || depth + 1 > maxDepth) return undefined;
            const read = numbersAt(b, j);
            if (!read) return undefined;
            found = { start: j, end: read.end, numbers: read.numbers };
            i = read.end - 1;
            continue;
          }
        }
      }
      i = end;
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (++depth > maxDepth) throw new NestsTooDeep();
      keyNext = depth === 1;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth--;
    } else if (c === COMMA) {
      keyNext = depth === 1;
    }
  }
  return found;
}

/** Where numbersAt reads a vector before copying it out: a new array grown number by number took twice as long. */
let scratch = new Float64Array(4096);
/** The most scratch keeps between records: room for the largest embeddings (3,072 and 4,096 dimensions). */
const scratchKept = 8192;

/**
 * numbersAt reads the JSON array of numbers opening at b[open] (by JSON's grammar, white space
 * allowed), each as the float32 that JSON.parse's double would become; undefined when the array
 * holds anything else, or a number beyond a float32's range.
 */
function numbersAt(b: Buffer, open: number): { numbers: number[]; end: number } | undefined {
  let n = 0;
  let i = open + 1;
  let c = b[i];
  while (space(c)) c = b[++i];
  if (c !== CLOSE_BRACKET) {
    for (;;) {
      const start = i;
      const negative = c === MINUS;
      if (negative) c = b[++i];
      // The digits, as one integer (exact below 2^53), and the power of ten that scales it.
      let m = 0;
      let scale = 0;
      if (c === ZERO) c = b[++i];
      else if (digit(c)) {
        do {
          m = m * 10 + (c - ZERO);
          c = b[++i];
        } while (digit(c));
      } else return undefined;
      if (c === DOT) {
        c = b[++i];
        if (!digit(c)) return undefined;
        do {
          m = m * 10 + (c - ZERO);
          scale--;
          c = b[++i];
        } while (digit(c));
      }
      if (c === LOWER_E || c === UPPER_E) {
        c = b[++i];
        const down = c === MINUS;
        if (down || c === PLUS) c = b[++i];
        if (!digit(c)) return undefined;
        let e = 0;
        do {
          e = Math.min(e * 10 + (c - ZERO), 1e6);
          c = b[++i];
        } while (digit(c));
        scale += down ? -e : e;
      }
      const value = float32Of(m, scale) ?? Math.fround(Number(b.toString("latin1", negative ? start + 1 : start, i)));
      if (!Number.isFinite(value)) return undefined;
      if (n === scratch.length) {
        const grown = new Float64Array(n * 2);
        grown.set(scratch);
        scratch = grown;
      }
      scratch[n++] = negative ? -value : value;
      while (space(c)) c = b[++i];
      if (c === CLOSE_BRACKET) break;
      if (c !== COMMA) return undefined;
      c = b[++i];
      while (space(c)) c = b[++i];
    }
  }
  const numbers = new Array<number>(n);
  for (let k = 0; k < n; k++) numbers[k] = scratch[k];
  // Grown for one long vector (a line may hold millions of numbers): not kept at that size.
  if (scratch.length > scratchKept) scratch = new Float64Array(scratchKept);
  return { numbers, end: i + 1 };
}

/**
 * float32Of is the float32 nearest the double nearest m x 10^scale (JSON.parse, then a
 * Float32Array), computed in a double; undefined when that cannot be sure of it.
 */
function float32Of(m: number, scale: number): number | undefined {
  if (scale < -22 || scale > 22) return undefined;
  const approx = scale < 0 ? m / exactPowers[-scale] : m * exactPowers[scale];
  // m exact: one correctly rounded operation of exact operands is the double JSON.parse reads.
  if (m < exactBelow) return Math.fround(approx);
  // More digits than a double holds: the approximation is within a few units of the last place of
  // the exact value; when every value that near rounds to the same float32, so does the exact one.
  const f = Math.fround(approx);
  return Math.fround(approx * (1 - margin)) === f && Math.fround(approx * (1 + margin)) === f ? f : undefined;
}
