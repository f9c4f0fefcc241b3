import { and, desc, eq, inArray, type SQL, sql } from "drizzle-orm";
import { openDatabase } from "../shared/db.js";
import * as schema from "./schema.js";

const migrationsFolder = new URL("./migrations", import.meta.url).pathname;

export type RunRow = typeof schema.runs.$inferSelect;
export type NewRun = typeof schema.runs.$inferInsert;

/** RunFilter selects runs of one account. */
export interface RunFilter {
  accountId: string;
  workflowRefName?: string;
  sessionId?: string;
  status?: number;
  offset: number;
  limit: number;
}

/** ExecutorStore holds every query of the Executor. */
export type ExecutorStore = ReturnType<typeof createExecutorStore>;

/** createExecutorStore opens the Executor's database (":memory:" for tests). */
export function createExecutorStore(file: string) {
  const db = openDatabase({ file, migrationsFolder, schema });
  const { orm } = db;
  const { runs } = schema;
  // Every run writes its row twice and many read it back: those statements are built once.
  const p = (...names: readonly string[]) => Object.fromEntries(names.map((n) => [n, sql.placeholder(n)]));
  const insertColumns = [
    "id",
    "accountId",
    "workflowRefName",
    "version",
    "versionId",
    "sessionId",
    "status",
    "input",
    "metadata",
    "createdAt",
    "startedAt",
    "parentRunId",
    "depth",
  ] as const;
  const finishColumns = [
    "status",
    "output",
    "error",
    "finishedAt",
    "durationMs",
    "emitted",
    "logs",
    "httpCalls",
    "warnings",
    "promptTokens",
    "completionTokens",
  ] as const;
  // drizzle's types take placeholders in values() but not in set(); at run time both encode the
  // value with the column's mapping (JSON columns included) when the statement runs.
  const insertStatement = orm
    .insert(runs)
    .values(p(...insertColumns) as never)
    .prepare();
  const finishStatement = orm
    .update(runs)
    .set(p(...finishColumns) as never)
    .where(eq(runs.id, sql.placeholder("id")))
    .prepare();
  const runStatement = orm
    .select()
    .from(runs)
    .where(and(eq(runs.id, sql.placeholder("id")), eq(runs.accountId, sql.placeholder("accountId"))))
    .prepare();
  // A run's row is written while its child starts, and its end after its caller has the result (its
  // response leaves first): each with what other runs wrote in the same turn of the event loop, in
  // order, in one transaction, so under load one WAL commit serves many runs and no write sits on a
  // run's critical path. Every read writes what is pending first, so nothing reads a record older
  // than what a caller was told.
  type Write = { row: Record<string, unknown>; insert: boolean };
  let pending: Write[] = [];
  const write = (w: Write) => (w.insert ? insertStatement : finishStatement).run(w.row);
  const writeAll = db.sqlite.transaction((writes: Write[]) => writes.forEach(write));
  function flush(): void {
    if (pending.length === 0) return;
    const writes = pending;
    pending = [];
    try {
      writeAll(writes);
    } catch {
      // One write that fails takes none of the others with it: each is tried on its own.
      for (const w of writes) {
        try {
          write(w);
        } catch (e) {
          process.stderr.write(`could not record the ${w.insert ? "start" : "end"} of run ${String(w.row.id)}: ${(e as Error).message}\n`);
        }
      }
    }
  }
  function later(write: Write): void {
    if (pending.length === 0) setImmediate(flush);
    pending.push(write);
  }
  return {
    close(): void {
      flush();
      db.close();
    },
    /** insertRun records a run that starts, before this turn of the event loop is over. */
    insertRun(row: Pick<NewRun, (typeof insertColumns)[number]>): void {
      later({ row, insert: true });
    },
    /** finishRun writes what a run ended with, before this turn of the event loop is over. */
    finishRun(id: string, fields: Required<Pick<NewRun, (typeof finishColumns)[number]>>): void {
      later({ row: { ...fields, id }, insert: false });
    },
    run(accountId: string, id: string): RunRow | undefined {
      flush();
      return runStatement.get({ id, accountId });
    },
    listRuns(filter: RunFilter): RunRow[] {
      flush();
      const where: SQL[] = [eq(runs.accountId, filter.accountId)];
      if (filter.workflowRefName) where.push(eq(runs.workflowRefName, filter.workflowRefName));
      if (filter.sessionId) where.push(eq(runs.sessionId, filter.sessionId));
      if (filter.status) where.push(eq(runs.status, filter.status));
      return orm
        .select()
        .from(runs)
        .where(and(...where))
        .orderBy(desc(runs.createdAt))
        .limit(filter.limit)
        .offset(filter.offset)
        .all();
    },
    /** failRunsInFlight marks runs left queued or running by a previous process as failed. */
    failRunsInFlight(statuses: number[], failed: number, error: { type: string; message: string; traceback: string }): number {
      return orm.update(runs).set({ status: failed, error, finishedAt: Date.now() }).where(inArray(runs.status, statuses)).run().changes;
    },
    integrityCheck(): string {
      return String(db.sqlite.pragma("integrity_check", { simple: true }));
    },
  };
}
