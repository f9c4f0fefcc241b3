import { and, desc, eq, gte, inArray, type SQL, sql } from "drizzle-orm";
import { RunStatus } from "../../gen/shaker/executor/v1/executor_pb.js";
import { openDatabase } from "../shared/db.js";
import * as schema from "./schema.js";

const migrationsFolder = new URL("./migrations", import.meta.url).pathname;

export type RunRow = typeof schema.runs.$inferSelect;
export type NewRun = typeof schema.runs.$inferInsert;
/** JournalEntry is one journaled ctx call of a run in flight. */
export type JournalEntry = typeof schema.runCalls.$inferSelect;

/** The columns of a run's end that only resumed or journaling runs need to give. */
type ResumeColumn = "attempt" | "attempts" | "unjournaledCalls";

/** The columns of a run's start that say how it is retried and resumed: defaults for a run that says nothing. */
type RetryColumn = "idempotencyKey" | "requestHash" | "detached" | "hasSecrets" | "timeoutMs" | "resume" | "attempt" | "executor";
const retryDefaults = {
  idempotencyKey: "",
  requestHash: "",
  detached: 0,
  hasSecrets: 0,
  timeoutMs: 0,
  resume: null,
  attempt: 1,
  executor: "",
};

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
  const { runs, runCalls } = schema;
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
    "idempotencyKey",
    "requestHash",
    "detached",
    "hasSecrets",
    "timeoutMs",
    "resume",
    "attempt",
    "executor",
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
    "attempt",
    "attempts",
    "unjournaledCalls",
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
  const journalStatement = db.sqlite.prepare(
    "INSERT OR REPLACE INTO run_calls (run_id, seq, method, request_hash, journaled, messages, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
  );
  const journalEntryStatement = orm
    .select()
    .from(runCalls)
    .where(and(eq(runCalls.runId, sql.placeholder("runId")), eq(runCalls.seq, sql.placeholder("seq"))))
    .prepare();
  const forgetJournalStatement = db.sqlite.prepare("DELETE FROM run_calls WHERE run_id = ?");
  type Write = { row: Record<string, unknown>; insert: boolean; forgetJournal?: boolean };
  let pending: Write[] = [];
  const write = (w: Write) => {
    (w.insert ? insertStatement : finishStatement).run(w.row);
    if (w.forgetJournal) forgetJournalStatement.run(w.row.id);
  };
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
    insertRun(row: Pick<NewRun, Exclude<(typeof insertColumns)[number], RetryColumn>> & Partial<Pick<NewRun, RetryColumn>>): void {
      later({ row: { ...retryDefaults, ...row }, insert: true });
    },
    /**
     * finishRun writes what a run ended with, before this turn of the event loop is over; with
     * forgetJournal, its journal goes in the same transaction (an ended run never resumes).
     */
    finishRun(
      id: string,
      fields: Required<Pick<NewRun, Exclude<(typeof finishColumns)[number], ResumeColumn>>> & Partial<Pick<NewRun, ResumeColumn>>,
      forgetJournal = false,
    ): void {
      later({ row: { attempt: 1, attempts: null, unjournaledCalls: 0, ...fields, id }, insert: false, forgetJournal });
    },
    /** runById is a run of any account: for resuming runs, never for callers. */
    runById(id: string): RunRow | undefined {
      flush();
      return orm.select().from(runs).where(eq(runs.id, id)).get();
    },
    /** runByKey is the latest run of an account with an idempotency key, created at `since` or later. */
    runByKey(accountId: string, idempotencyKey: string, since: number): RunRow | undefined {
      flush();
      return orm
        .select()
        .from(runs)
        .where(and(eq(runs.accountId, accountId), eq(runs.idempotencyKey, idempotencyKey), gte(runs.createdAt, since)))
        .orderBy(desc(runs.createdAt))
        .limit(1)
        .get();
    },
    /** runByRequest is the latest run of an account made for a request with this hash. */
    runByRequest(accountId: string, requestHash: string): RunRow | undefined {
      flush();
      return orm
        .select()
        .from(runs)
        .where(and(eq(runs.accountId, accountId), eq(runs.requestHash, requestHash)))
        .orderBy(desc(runs.createdAt))
        .limit(1)
        .get();
    },
    /** runsInFlight are the runs left queued or running: by a process that died, when read at start. */
    runsInFlight(statuses: number[]): RunRow[] {
      flush();
      return orm.select().from(runs).where(inArray(runs.status, statuses)).orderBy(runs.createdAt).all();
    },
    /** resumeRun records that a run starts its next attempt. */
    resumeRun(id: string, attempt: number, attempts: NonNullable<NewRun["attempts"]>, startedAt: number, executor: string): void {
      flush();
      orm.update(runs).set({ attempt, attempts, startedAt, executor, status: RunStatus.RUNNING }).where(eq(runs.id, id)).run();
    },
    /** failRun ends a run that has no process (one interrupted and never resumed). */
    failRun(id: string, status: number, error: { type: string; message: string; traceback: string }): void {
      flush();
      const finishedAt = Date.now();
      orm
        .update(runs)
        .set({ status, error, finishedAt, durationMs: sql`${finishedAt} - ${runs.createdAt}` })
        .where(eq(runs.id, id))
        .run();
      forgetJournalStatement.run(id);
    },
    /** journalEntry is a run's journaled call at a sequence number. */
    journalEntry(runId: string, seq: number): JournalEntry | undefined {
      return journalEntryStatement.get({ runId, seq });
    },
    /** writeJournal journals a call now, durably, before its answer leaves (the run's row first). */
    writeJournal(e: JournalEntry): void {
      flush();
      journalStatement.run(
        e.runId,
        e.seq,
        e.method,
        e.requestHash,
        e.journaled,
        e.messages,
        e.error ? JSON.stringify(e.error) : null,
        e.createdAt,
      );
    },
    /** truncateJournal drops a run's entries from a sequence number on: replay stopped there. */
    truncateJournal(runId: string, fromSeq: number): void {
      db.sqlite.prepare("DELETE FROM run_calls WHERE run_id = ? AND seq >= ?").run(runId, fromSeq);
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
    integrityCheck(): string {
      return String(db.sqlite.pragma("integrity_check", { simple: true }));
    },
  };
}
