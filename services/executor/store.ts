import { and, desc, eq, gte, inArray, type SQL, sql } from "drizzle-orm";
import { RunStatus } from "../../gen/shaker/executor/v1/executor_pb.js";
import { type Orm, openServiceDatabase } from "../shared/db.js";
import * as schema from "./schema.js";
import * as pgSchema from "./schema.pg.js";

export type RunRow = typeof schema.runs.$inferSelect;
export type NewRun = typeof schema.runs.$inferInsert;
/** JournalEntry is one journaled ctx call of a run in flight. */
export type JournalEntry = typeof schema.runCalls.$inferSelect;

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

/** The columns of a run's start. */
type StartColumn =
  | "id"
  | "accountId"
  | "workflowRefName"
  | "version"
  | "versionId"
  | "sessionId"
  | "status"
  | "input"
  | "metadata"
  | "createdAt"
  | "startedAt"
  | "parentRunId"
  | "depth"
  | RetryColumn;

/** The columns of a run's end that only resumed or journaling runs need to give. */
type ResumeColumn = "attempt" | "attempts" | "unjournaledCalls";

/** The columns of a run's end. */
type FinishColumn =
  | "status"
  | "output"
  | "error"
  | "finishedAt"
  | "durationMs"
  | "emitted"
  | "logs"
  | "httpCalls"
  | "warnings"
  | "promptTokens"
  | "completionTokens"
  | ResumeColumn;

/** RunFilter selects runs of one account. */
export interface RunFilter {
  accountId: string;
  workflowRefName?: string;
  sessionId?: string;
  status?: number;
  offset: number;
  limit: number;
}

/** Write is one of the store's writes, made in order with all the others. */
interface Write {
  apply(tx: Orm<typeof schema>): Promise<unknown>;
  /** what names a write nobody waits for, for the log when it fails. */
  what?: string;
  /** error is why the write failed, for the caller who waits for it. */
  error?: unknown;
}

/** ExecutorStore holds every query of the Executor. */
export type ExecutorStore = Awaited<ReturnType<typeof createExecutorStore>>;

/**
 * createExecutorStore opens the Executor's database: a SQLite file (":memory:" for tests) or a
 * postgres:// URL.
 */
export async function createExecutorStore(location: string, options: { poolSize?: number } = {}) {
  const db = await openServiceDatabase({ service: "executor", location, schema, pgSchema, poolSize: options.poolSize });
  const { orm } = db;
  const { runs, runCalls } = db.tables;

  // Every write goes through one queue, in order, in batches of one transaction each. A run's row is
  // written while its child starts, and its end after its caller has the result (its response leaves
  // first): each with what other runs wrote in the same turn of the event loop, so under load one
  // commit serves many runs and no write sits on a run's critical path. The writes a caller waits
  // for (a journal entry, before the answer it keeps leaves) join the next batch at once, with the
  // runs' rows before them. A batch waits for the one before it; meanwhile the writes that come
  // queue for the next one. Every read waits for what is pending, so nothing reads a record older
  // than what a caller was told.
  let pending: Write[] = [];
  /** queued is true while a batch waits to start: the writes that come join it. */
  let queued = false;
  /** written settles once the latest batch is written. */
  let written: Promise<void> = Promise.resolve();

  async function writeBatch(writes: Write[]): Promise<void> {
    try {
      await db.transaction(async (tx) => {
        for (const w of writes) await w.apply(tx);
      });
    } catch (e) {
      if (writes.length === 1) return failed(writes[0], e);
      // One write that fails takes none of the others with it: each is tried on its own.
      for (const w of writes) await db.transaction((tx) => w.apply(tx)).catch((e: unknown) => failed(w, e));
    }
  }
  function failed(w: Write, e: unknown): void {
    w.error = e;
    if (w.what) process.stderr.write(`could not record ${w.what}: ${(e as Error).message}\n`);
  }
  /** flush starts writing what is pending (unless a batch that will take it waits already); it settles once all of it is written. */
  function flush(): Promise<void> {
    if (pending.length > 0 && !queued) {
      queued = true;
      written = written.then(() => {
        queued = false;
        const writes = pending;
        pending = [];
        return writeBatch(writes);
      });
    }
    return written;
  }
  /** later writes before this turn of the event loop is over, with the other writes of the turn. */
  function later(w: Write): void {
    pending.push(w);
    if (pending.length === 1) setImmediate(flush);
  }
  /** now writes at once (with what is pending before it), and settles once it is written; it throws when it failed. */
  async function now(apply: Write["apply"]): Promise<void> {
    const w: Write = { apply };
    pending.push(w);
    await flush();
    if (w.error) throw w.error;
  }
  const first = async <T>(rows: Promise<T[]>): Promise<T | undefined> => (await rows)[0];
  const forgetJournal = (tx: Orm<typeof schema>, runId: string) => tx.delete(runCalls).where(eq(runCalls.runId, runId));

  return {
    /** close writes what is pending and closes the database. */
    async close(): Promise<void> {
      await flush();
      await db.close();
    },
    /** insertRun records a run that starts, before this turn of the event loop is over. */
    insertRun(row: Pick<NewRun, Exclude<StartColumn, RetryColumn>> & Partial<Pick<NewRun, RetryColumn>>): void {
      const values = { ...retryDefaults, ...row };
      later({ what: `the start of run ${row.id}`, apply: async (tx) => await tx.insert(runs).values(values) });
    },
    /**
     * finishRun writes what a run ended with, before this turn of the event loop is over; with
     * forgetJournal, its journal goes in the same transaction (an ended run never resumes).
     */
    finishRun(
      id: string,
      fields: Required<Pick<NewRun, Exclude<FinishColumn, ResumeColumn>>> & Partial<Pick<NewRun, ResumeColumn>>,
      forget = false,
    ): void {
      const values = { attempt: 1, attempts: null, unjournaledCalls: 0, ...fields };
      later({
        what: `the end of run ${id}`,
        apply: async (tx) => {
          await tx.update(runs).set(values).where(eq(runs.id, id));
          if (forget) await forgetJournal(tx, id);
        },
      });
    },
    /** runByKey is the latest run of an account with an idempotency key, created at `since` or later. */
    async runByKey(accountId: string, idempotencyKey: string, since: number): Promise<RunRow | undefined> {
      await flush();
      return first(
        orm
          .select()
          .from(runs)
          .where(and(eq(runs.accountId, accountId), eq(runs.idempotencyKey, idempotencyKey), gte(runs.createdAt, since)))
          .orderBy(desc(runs.createdAt))
          .limit(1),
      );
    },
    /** runByRequest is the latest run of an account made for a request with this hash. */
    async runByRequest(accountId: string, requestHash: string): Promise<RunRow | undefined> {
      await flush();
      return first(
        orm
          .select()
          .from(runs)
          .where(and(eq(runs.accountId, accountId), eq(runs.requestHash, requestHash)))
          .orderBy(desc(runs.createdAt))
          .limit(1),
      );
    },
    /** runsInFlight are the runs left queued or running: by a process that died, when read at start. */
    async runsInFlight(statuses: number[]): Promise<RunRow[]> {
      await flush();
      return orm.select().from(runs).where(inArray(runs.status, statuses)).orderBy(runs.createdAt);
    },
    /** resumeRun records that a run starts its next attempt. */
    resumeRun(id: string, attempt: number, attempts: NonNullable<NewRun["attempts"]>, startedAt: number, executor: string): Promise<void> {
      return now((tx) => tx.update(runs).set({ attempt, attempts, startedAt, executor, status: RunStatus.RUNNING }).where(eq(runs.id, id)));
    },
    /** failRun ends a run that has no process (one interrupted and never resumed). */
    failRun(id: string, status: number, error: { type: string; message: string; traceback: string }): Promise<void> {
      const finishedAt = Date.now();
      return now(async (tx) => {
        await tx
          .update(runs)
          .set({ status, error, finishedAt, durationMs: sql`${finishedAt} - ${runs.createdAt}` })
          .where(eq(runs.id, id));
        await forgetJournal(tx, id);
      });
    },
    /** journalEntry is a run's journaled call at a sequence number. */
    async journalEntry(runId: string, seq: number): Promise<JournalEntry | undefined> {
      await flush();
      return first(
        orm
          .select()
          .from(runCalls)
          .where(and(eq(runCalls.runId, runId), eq(runCalls.seq, seq)))
          .limit(1),
      );
    },
    /** writeJournal journals a call durably: it settles once the entry (and the run's row before it) is written. */
    writeJournal(e: JournalEntry): Promise<void> {
      const { runId, seq, ...rest } = e;
      return now((tx) =>
        tx
          .insert(runCalls)
          .values(e)
          .onConflictDoUpdate({ target: [runCalls.runId, runCalls.seq], set: rest }),
      );
    },
    /** truncateJournal drops a run's entries from a sequence number on: replay stopped there. */
    truncateJournal(runId: string, fromSeq: number): Promise<void> {
      return now((tx) => tx.delete(runCalls).where(and(eq(runCalls.runId, runId), gte(runCalls.seq, fromSeq))));
    },
    /** run is a run of an account. */
    async run(accountId: string, id: string): Promise<RunRow | undefined> {
      await flush();
      return first(
        orm
          .select()
          .from(runs)
          .where(and(eq(runs.id, id), eq(runs.accountId, accountId)))
          .limit(1),
      );
    },
    /** listRuns lists an account's runs, the latest first. */
    async listRuns(filter: RunFilter): Promise<RunRow[]> {
      await flush();
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
        .offset(filter.offset);
    },
    /** integrityCheck is SQLite's check of the database file ("ok"); undefined on PostgreSQL, which has none. */
    integrityCheck(): string | undefined {
      return db.sqlite && String(db.sqlite.pragma("integrity_check", { simple: true }));
    },
  };
}
