import { fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate, timestampFromMs, type Value, ValueSchema } from "@bufbuild/protobuf/wkt";

/** toValue turns any JSON value into a google.protobuf.Value. */
export function toValue(json: unknown): Value {
  return fromJson(ValueSchema, (json ?? null) as JsonValue);
}

/** fromValue turns a google.protobuf.Value back into JSON; an absent value is null. */
export function fromValue(value: Value | undefined): JsonValue {
  return value ? toJson(ValueSchema, value) : null;
}

/** msOf converts an optional Timestamp to epoch milliseconds (0 when absent). */
export function msOf(ts: Timestamp | undefined): number {
  return ts ? timestampDate(ts).getTime() : 0;
}

/** timestampOf converts epoch milliseconds, fractions allowed, to a Timestamp. */
export function timestampOf(ms: number): Timestamp {
  return timestampFromMs(Math.round(ms));
}

/**
 * defaultMaxJsonDepth bounds how deeply a JSON body may nest arrays and objects. The services'
 * protobuf decoding gives up past 100 levels, so a deeper body would fail inside them instead of
 * being refused here with a message that says why.
 */
export const defaultMaxJsonDepth = 64;

/**
 * nestsDeeperThan tells whether JSON text nests arrays and objects more than `max` levels deep. It
 * looks only at brackets outside strings, so it answers for malformed text too (JSON.parse then
 * says what is wrong), and it stops at the first level too many.
 */
export function nestsDeeperThan(text: string, max: number): boolean {
  // Text with no more opening brackets than `max` cannot nest deeper: counted with indexOf (a
  // memchr), that spares the walk below for nearly every body, such as a record of a 384-float vector.
  let opening = 0;
  for (const bracket of ["[", "{"])
    for (let at = text.indexOf(bracket); at >= 0 && opening <= max; at = text.indexOf(bracket, at + 1)) opening++;
  if (opening <= max) return false;
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // Jump to the closing quote: one not preceded by an odd number of backslashes.
      let end = i;
      for (;;) {
        end = text.indexOf('"', end + 1);
        if (end < 0) return false;
        let backslashes = 0;
        while (text.charCodeAt(end - 1 - backslashes) === 0x5c) backslashes++;
        if (backslashes % 2 === 0) break;
      }
      i = end;
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) return true;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    }
  }
  return false;
}
