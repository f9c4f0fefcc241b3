import { and, asc, eq, type SQL } from "drizzle-orm";
import { openDatabase } from "../shared/db.js";
import * as schema from "./schema.js";

const migrationsFolder = new URL("./migrations", import.meta.url).pathname;

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
export type ModelProxyStore = ReturnType<typeof createModelProxyStore>;

/** createModelProxyStore opens the ModelProxy's database (":memory:" for tests). */
export function createModelProxyStore(file: string) {
  const db = openDatabase({ file, migrationsFolder, schema });
  const { orm } = db;
  const { calls } = schema;
  // Records are written in batches on the service's own thread: one prepared statement, not a
  // query built per row (drizzle's builder cost about 0.3 ms a row here).
  const insert = db.sqlite.prepare(
    `INSERT OR IGNORE INTO calls (id, account_id, session_id, run_id, workflow_ref_name, intent, application, kind, model,
       provider, attempts, attempt_log, status, error, latency_ms, ttft_ms, prompt_tokens, completion_tokens, request, response, created_at)
     VALUES (@id, @accountId, @sessionId, @runId, @workflowRefName, @intent, @application, @kind, @model,
       @provider, @attempts, @attemptLog, @status, @error, @latencyMs, @ttftMs, @promptTokens, @completionTokens, @request, @response, @createdAt)`,
  );
  const json = (v: unknown) => (v === undefined || v === null ? null : JSON.stringify(v));
  const insertMany = db.sqlite.transaction((rows: NewCall[]) => {
    for (const row of rows) {
      insert.run({ ...row, attemptLog: json(row.attemptLog), request: json(row.request), response: json(row.response) });
    }
  });
  return {
    close: () => db.close(),
    /** insertCalls writes a batch in one transaction: all or nothing. */
    insertCalls(rows: NewCall[]): void {
      insertMany(rows);
    },
    listCalls(filter: CallFilter): CallRow[] {
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
        .offset(filter.offset)
        .all();
    },
  };
}
