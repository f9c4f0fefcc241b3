import type Database from "better-sqlite3";
import { and, asc, eq, type SQL } from "drizzle-orm";
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

// Rows per INSERT on PostgreSQL: a statement takes at most 65535 parameters, 21 a row.
const rowsPerInsert = 1000;

/**
 * createModelProxyStore opens the ModelProxy's database: a SQLite file (":memory:" for tests) or a
 * postgres:// URL.
 */
export async function createModelProxyStore(location: string, options: { poolSize?: number } = {}) {
  const db = await openServiceDatabase({ service: "modelproxy", location, schema, pgSchema, poolSize: options.poolSize });
  const { orm } = db;
  const { calls } = db.tables;
  const insertCalls = db.sqlite ? sqliteBatchInsert(db.sqlite) : undefined;
  return {
    close: () => db.close(),
    /** insertCalls writes a batch in one transaction: all or nothing. A call recorded already is left as it is. */
    async insertCalls(rows: NewCall[]): Promise<void> {
      if (insertCalls) return insertCalls(rows);
      await db.transaction(async (tx) => {
        for (let i = 0; i < rows.length; i += rowsPerInsert) {
          await tx
            .insert(calls)
            .values(rows.slice(i, i + rowsPerInsert))
            .onConflictDoNothing();
        }
      });
    },
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

/**
 * sqliteBatchInsert writes records on SQLite with one prepared statement, not a query built per
 * batch: drizzle's builder cost several times as much a row (bench/stores.ts), on the thread that
 * serves every call.
 */
function sqliteBatchInsert(sqlite: Database.Database) {
  const insert = sqlite.prepare(
    `INSERT INTO calls (id, account_id, session_id, run_id, workflow_ref_name, intent, application, kind, model,
       provider, attempts, attempt_log, status, error, latency_ms, ttft_ms, prompt_tokens, completion_tokens, request, response, created_at)
     VALUES (@id, @accountId, @sessionId, @runId, @workflowRefName, @intent, @application, @kind, @model,
       @provider, @attempts, @attemptLog, @status, @error, @latencyMs, @ttftMs, @promptTokens, @completionTokens, @request, @response, @createdAt)
     ON CONFLICT DO NOTHING`,
  );
  const json = (v: unknown) => (v === undefined || v === null ? null : JSON.stringify(v));
  const insertMany = sqlite.transaction((rows: NewCall[]) => {
    for (const row of rows) {
      insert.run({ ...row, attemptLog: json(row.attemptLog), request: json(row.request), response: json(row.response) });
    }
  });
  return async (rows: NewCall[]) => {
    insertMany(rows);
  };
}
