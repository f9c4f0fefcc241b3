import type Database from "better-sqlite3";
import { and, asc, eq, getTableColumns, type SQL } from "drizzle-orm";
import type pg from "pg";
import { openServiceDatabase } from "../shared/db.js";
import * as schema from "./schema.js";
import * as pgSchema from "./schema.pg.js";

export type CallRow = typeof schema.calls.$inferSelect;
export type NewCall = typeof schema.calls.$inferInsert;

/** CallFilter selects calls of one account. */
export interface CallFilter {
  accountId: string;
  sessionId?: string;
  runId?: string;
  workflowRefName?: string;
  offset: number;
  limit: number;
}

/** ModelProxyStore holds every query of the ModelProxy. */
export type ModelProxyStore = Awaited<ReturnType<typeof createModelProxyStore>>;

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

/**
 * createModelProxyStore opens the ModelProxy's database: a SQLite file (":memory:" for tests) or a
 * postgres:// URL.
 */
export async function createModelProxyStore(location: string, options: { poolSize?: number } = {}) {
  const db = await openServiceDatabase({ service: "modelproxy", location, schema, pgSchema, poolSize: options.poolSize });
  const { orm } = db;
  const { calls } = db.tables;
  const insertCalls = db.sqlite ? sqliteBatchInsert(db.sqlite) : postgresBatchInsert(db.pool!);
  return {
    close: () => db.close(),
    /** insertCalls writes a batch in one transaction: all or nothing. A call recorded already is left as it is. */
    insertCalls,
    listCalls(filter: CallFilter): Promise<CallRow[]> {
      const where: SQL[] = [eq(calls.accountId, filter.accountId)];
      if (filter.sessionId) where.push(eq(calls.sessionId, filter.sessionId));
      if (filter.runId) where.push(eq(calls.runId, filter.runId));
      if (filter.workflowRefName) where.push(eq(calls.workflowRefName, filter.workflowRefName));
      return orm
        .select()
        .from(calls)
        .where(and(...where))
        .orderBy(asc(calls.createdAt), asc(calls.id))
        .limit(filter.limit)
        .offset(filter.offset);
    },
  };
}

// Records are written in batches on the thread that serves every call, so not through drizzle's
// builder: it cost 4-6 times as much a record on SQLite, and 3-5 times the CPU on PostgreSQL,
// blocking this thread for tens of milliseconds a batch (bench/stores.ts has the figures).

/** sqliteBatchInsert writes records on SQLite with one prepared statement, run per record in one transaction. */
function sqliteBatchInsert(sqlite: Database.Database) {
  const insert = sqlite.prepare(
    `INSERT INTO calls (${callColumns.map((c) => c.name).join(", ")}) VALUES (${callColumns.map(() => "?").join(", ")}) ON CONFLICT DO NOTHING`,
  );
  const insertMany = sqlite.transaction((rows: NewCall[]) => {
    for (const row of rows) insert.run(columnValues(row));
  });
  return async (rows: NewCall[]) => {
    insertMany(rows);
  };
}

/**
 * postgresBatchInsert writes records on PostgreSQL in one statement, each column's values as one
 * array parameter (unnest): a batch of any size is one round trip of 21 parameters.
 */
function postgresBatchInsert(pool: pg.Pool) {
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
