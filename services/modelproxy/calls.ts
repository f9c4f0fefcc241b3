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

/** columnValues are a record's values in callColumns' order, as either driver binds them (JSON as its text). */
function columnValues(row: NewCall): unknown[] {
  return callColumns.map((c) => {
    const value = row[c.key] ?? null;
    return c.json && value !== null ? JSON.stringify(value) : value;
  });
}

// Records are written in batches, not through drizzle's builder: it cost 4-6 times as much a record
// on SQLite, and 3-5 times the CPU on PostgreSQL, where the batch is encoded on the thread that
// serves every call (bench/stores.ts has the figures).

/** sqliteBatchInsert writes records on SQLite with one prepared statement, run per record in one transaction. */
export function sqliteBatchInsert(sqlite: Database.Database): (rows: NewCall[]) => void {
  const insert = sqlite.prepare(
    `INSERT INTO calls (${callColumns.map((c) => c.name).join(", ")}) VALUES (${callColumns.map(() => "?").join(", ")}) ON CONFLICT DO NOTHING`,
  );
  return sqlite.transaction((rows: NewCall[]) => {
    for (const row of rows) insert.run(columnValues(row));
  });
}

/**
 * postgresBatchInsert writes records on PostgreSQL in one statement, each column's values as one
 * array parameter (unnest): a batch of any size is one round trip of 21 parameters.
 */
export function postgresBatchInsert(pool: pg.Pool): (rows: NewCall[]) => Promise<void> {
  const text = `INSERT INTO modelproxy.calls (${callColumns.map((c) => c.name).join(", ")})
    SELECT * FROM unnest(${callColumns.map((c, i) => `$${i + 1}::${c.type}[]`).join(", ")}) ON CONFLICT DO NOTHING`;
  return async (rows: NewCall[]) => {
    const values = rows.map(columnValues);
    await pool.query(
      text,
      callColumns.map((_, i) => values.map((v) => v[i])),
    );
  };
}
