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
