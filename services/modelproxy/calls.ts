// Writing call records in batches, on either database: the ModelProxy's store on PostgreSQL and
// its writer thread on SQLite (calls-thread.ts) share these.
import type Database from "better-sqlite3";
import { getTableColumns } from "drizzle-orm";
import type pg from "pg";
import type * as schema from "./schema.js";
import * as pgSchema from "./schema.pg.js";

export type NewCall = typeof schema.calls.$inferInsert;

// A record's columns: their names (the same in both schemas), PostgreSQL types, and which hold JSON.
const callColumns = Object.entries(getTableColumns(pgSchema.calls)).map(([key, column]) => ({
  key: key as keyof NewCall,
  name: column.name,
  type: column.getSQLType(),
  json: column.dataType === "json",
}));

/**
 * EncodedCall is a record as both writers take it: its values in the table's column order, JSON as
 * its text. A record waits up to a flush interval for its batch; held this way it is a few strings
 * rather than the request's and answer's object graphs, which the young generation's collections
 * copied (and promoted) while they waited, and the copy to the writer thread walked again.
 */
export type EncodedCall = unknown[];

/** encodeCall is a record's values in callColumns' order, as either driver binds them. */
export function encodeCall(row: NewCall): EncodedCall {
  return callColumns.map((c) => {
    const value = row[c.key] ?? null;
    return c.json && value !== null ? JSON.stringify(value) : value;
  });
}

// Records are written in batches, not through drizzle's builder: it cost 4-6 times as much a record
// on SQLite, and 3-5 times the CPU on PostgreSQL, where the batch is encoded on the thread that
// serves every call (bench/stores.ts has the figures).

/** sqliteBatchInsert writes records on SQLite with one prepared statement, run per record in one transaction. */
export function sqliteBatchInsert(sqlite: Database.Database): (rows: EncodedCall[]) => void {
  const insert = sqlite.prepare(
    `INSERT INTO calls (${callColumns.map((c) => c.name).join(", ")}) VALUES (${callColumns.map(() => "?").join(", ")}) ON CONFLICT DO NOTHING`,
  );
  return sqlite.transaction((rows: EncodedCall[]) => {
    for (const row of rows) insert.run(row);
  });
}

/**
 * postgresBatchInsert writes records on PostgreSQL in one statement, each column's values as one
 * array parameter (unnest): a batch of any size is one round trip of 21 parameters.
 */
export function postgresBatchInsert(pool: pg.Pool): (rows: EncodedCall[]) => Promise<void> {
  const text = `INSERT INTO modelproxy.calls (${callColumns.map((c) => c.name).join(", ")})
    SELECT * FROM unnest(${callColumns.map((c, i) => `$${i + 1}::${c.type}[]`).join(", ")}) ON CONFLICT DO NOTHING`;
  return async (rows: EncodedCall[]) => {
    await pool.query(
      text,
      callColumns.map((_, i) => rows.map((v) => v[i])),
    );
  };
}
