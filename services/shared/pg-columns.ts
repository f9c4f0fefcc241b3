// Column types of the PostgreSQL schemas (services/<service>/schema.pg.ts) that drizzle's pg-core
// has no built-in for with the TypeScript shape the SQLite schemas give: a row read from either
// database is the same object (services/shared/schema-parity.ts checks it).
import { customType } from "drizzle-orm/pg-core";

/** bytea is a blob: a Buffer each way (node-postgres reads bytea as a Buffer and sends a Buffer as bytea). */
export const bytea = customType<{ data: Buffer; driverData: Buffer }>({
  dataType: () => "bytea",
});

/**
 * float4Array is a float32 vector kept as `real[]`, read and written as the Buffer of its
 * little-endian float32s that the SQLite schema stores in a blob. Each value goes through exactly:
 * `real` is float32, and PostgreSQL prints the shortest text that reads back to the same float.
 * In SQL it is an array PostgreSQL can scan (an exact cosine search needs nothing else) and that
 * pgvector casts to `vector` (`vector::vector(d)`) where the extension exists.
 */
export const float4Array = customType<{ data: Buffer; driverData: number[] | string }>({
  dataType: () => "real[]",
  toDriver(value: Buffer): string {
    if (value.length % 4 !== 0) throw new RangeError(`a float32 vector's bytes come in fours, not ${value.length}`);
    // An array literal, not a JS array: node-postgres would print -0 as "0" (and lose its sign).
    const out = new Array<string>(value.length / 4);
    for (let i = 0; i < out.length; i++) {
      const v = value.readFloatLE(i * 4);
      out[i] = Object.is(v, -0) ? "-0" : String(v);
    }
    return `{${out.join(",")}}`;
  },
  fromDriver(value: number[] | string): Buffer {
    // node-postgres parses real[] into numbers; a text form ("{1,2.5}") comes from drivers that do not.
    const values =
      typeof value === "string"
        ? value
            .slice(1, -1)
            .split(",")
            .filter((v) => v !== "")
            .map(Number)
        : value;
    const out = Buffer.allocUnsafe(values.length * 4);
    for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i], i * 4);
    return out;
  },
});

/** tsvector is a text-search vector; only ever a generated column here, read as PostgreSQL's text form. */
export const tsvector = customType<{ data: string; driverData: string }>({
  dataType: () => "tsvector",
});
