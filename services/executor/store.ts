import type Database from "better-sqlite3";
import { and, desc, eq, getTableColumns, gte, inArray, lte, ne, notInArray, type SQL, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
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
const startColumns = [
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
type StartColumn = (typeof startColumns)[number];

/** The columns of a run's end that only resumed or journaling runs need to give. */
type ResumeColumn = "attempt" | "attempts" | "unjournaledCalls";

/** The columns of a run's end. */
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
type FinishColumn = (typeof finishColumns)[number];

/**
 * sqliteRunWrites are a run's two writes, its start and its end, prepared once on SQLite: built
 * per run with drizzle's builders, as on PostgreSQL, they took 3 to 5 times the CPU (measured with
 * 16 runs a turn: 225-370 µs against 67-72 µs a run, its start and its end).
 */
function sqliteRunWrites(sqlite: Database.Database) {
  const orm = drizzle(sqlite, { schema });
  const { runs } = schema;
  const p = (names: readonly string[]) => Object.fromEntries(names.map((n) => [n, sql.placeholder(n)]));
  // drizzle's types take placeholders in values() but not in set(); at run time both encode the
  // value with the column's mapping (JSON columns included) when the statement runs.
  return {
    start: orm
      .insert(runs)
      .values(p(startColumns) as never)
      .prepare(),
    end: orm
      .update(runs)
      .set(p(finishColumns) as never)
      // An attempt another executor took over from this one (a later attempt) is not overwritten.
      .where(and(eq(runs.id, sql.placeholder("id")), lte(runs.attempt, sql.placeholder("attempt"))))
      .prepare(),
  };
}

/** RunEnd is what a run ended with, as its row is updated. */
type RunEnd = Pick<NewRun, FinishColumn> & { id: string; attempt: number };

/** endColumns are the columns a run's end writes on PostgreSQL, its id first, each with its type there. */
const endColumns = (["id", ...finishColumns] as const).map((key) => {
  const column = pgSchema.runs[key];
  return { key, column, name: sql.identifier(column.name), type: sql.raw(column.getSQLType()) };
});

/**
 * updateEnds writes the ends of runs on PostgreSQL in one UPDATE, each run's row from its own line
 * of a VALUES list (typed there: parameters in a VALUES list have none), and, as one run's end
 * does, not over an attempt another executor took over from this one (a later attempt).
 */
function updateEnds(ends: RunEnd[]): SQL {
  const line = (end: RunEnd) =>
    sql`(${sql.join(
      endColumns.map(({ key, column, type }) => {
        const value = end[key] ?? null;
        return sql`${value === null ? null : column.mapToDriverValue(value)}::${type}`;
      }),
      sql`, `,
    )})`;
  const set = sql.join(
    endColumns.slice(1).map(({ name }) => sql`${name} = v.${name}`),
    sql`, `,
  );
  const names = sql.join(
    endColumns.map(({ name }) => name),
    sql`, `,
  );
  const { runs } = pgSchema;
  return sql`update ${runs} set ${set} from (values ${sql.join(ends.map(line), sql`, `)}) as v(${names})
    where ${runs.id} = v.${sql.identifier(runs.id.name)} and ${runs.attempt} <= v.${sql.identifier(runs.attempt.name)}
    returning ${runs.id} as id`;
}

/** The statuses of a run in flight: queued or running (or interrupted, until it resumes or fails). */
const inFlight = [RunStatus.QUEUED, RunStatus.RUNNING];

/** RunFilter selects runs of one account. */
export interface RunFilter {
  accountId: string;
  workflowRefName?: string;
  sessionId?: string;
  status?: number;
  offset: number;
  limit: number;
}

/**
 * Write is one of the store's writes, made in order with all the others: a run's start (its row),
 * or any other.
 */
type Write = (
  | { start: NewRun }
  | { journal: JournalEntry }
  | { finish: RunEnd; forget: boolean }
  | { apply(tx: Orm<typeof schema>): Promise<unknown> }
) & {
  /** what names a write nobody waits for, for the log when it fails. */
  what?: string;
  /** error is why the write failed, for the caller who waits for it. */
  error?: unknown;
};

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
  const prepared = db.sqlite && sqliteRunWrites(db.sqlite);
  // A journal entry written again (its call made again by a resumed run) takes the new answer.
  const journalUpdate = Object.fromEntries(
    Object.entries(getTableColumns(runCalls))
      .filter(([key]) => key !== "runId" && key !== "seq")
      .map(([key, column]) => [key, sql.raw(`excluded."${column.name}"`)]),
  );

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

  /**
   * writeAll makes writes in one transaction. The runs' starts come first, on PostgreSQL in one
   * statement (in a profile of a batch, sending its statements one by one cost the most): no start
   * depends on a write after it, and every other write that names a run comes after that run's start.
   */
  async function writeAll(tx: Orm<typeof schema>, writes: Write[]): Promise<void> {
    const starts = writes.flatMap((w) => ("start" in w ? [w.start] : []));
    if (prepared) for (const row of starts) prepared.start.run(row);
    // A PostgreSQL statement takes at most 65,535 parameters: 21 a row.
    else for (let i = 0; i < starts.length; i += 1000) await tx.insert(runs).values(starts.slice(i, i + 1000));
    // The rest in order; writes of one kind that follow each other share statements (each statement
    // is a round trip to PostgreSQL: under load a batch holds the journal entries and the ends of
    // several runs).
    for (let i = 0; i < writes.length; ) {
      const w = writes[i];
      let j = i + 1;
      if ("journal" in w) {
        while (j < writes.length && "journal" in writes[j]) j++;
        await journalAll(
          tx,
          writes.slice(i, j).map((x) => (x as { journal: JournalEntry }).journal),
        );
      } else if ("finish" in w) {
        while (j < writes.length && "finish" in writes[j]) j++;
        await finishAll(tx, writes.slice(i, j) as { finish: RunEnd; forget: boolean }[]);
      } else if ("apply" in w) await w.apply(tx);
      i = j;
    }
  }
  /** journalAll writes journal entries in one statement (the last of any two for the same call). */
  async function journalAll(tx: Orm<typeof schema>, entries: JournalEntry[]): Promise<void> {
    const byCall = new Map(entries.map((e) => [`${e.runId}\n${e.seq}`, e]));
    const rows = [...byCall.values()];
    // 8 parameters a row, under PostgreSQL's 65,535.
    for (let i = 0; i < rows.length; i += 5000) {
      await tx
        .insert(runCalls)
        .values(rows.slice(i, i + 5000))
        .onConflictDoUpdate({ target: [runCalls.runId, runCalls.seq], set: journalUpdate });
    }
  }
  /** finishAll writes the ends of runs, then drops the journals of those that asked, in one statement. */
  async function finishAll(tx: Orm<typeof schema>, ends: { finish: RunEnd; forget: boolean }[]): Promise<void> {
    // The runs whose end was written: an end from an attempt another executor took over is not, and
    // the journal of that later attempt stays.
    const ended = new Set<string>();
    if (prepared) {
      for (const { finish } of ends) if (prepared.end.run(finish).changes > 0) ended.add(finish.id);
    } else {
      // On PostgreSQL (tx is drizzle's pg transaction there, typed as SQLite's): one statement for
      // them all, 15 parameters a row.
      const pgTx = tx as unknown as { execute(query: SQL): Promise<{ rows: { id: string }[] }> };
      for (let i = 0; i < ends.length; i += 4000) {
        const { rows } = await pgTx.execute(updateEnds(ends.slice(i, i + 4000).map((e) => e.finish)));
        for (const row of rows) ended.add(row.id);
      }
    }
    const forget = ends.filter((e) => e.forget && ended.has(e.finish.id)).map((e) => e.finish.id);
    for (let i = 0; i < forget.length; i += 10_000) await tx.delete(runCalls).where(inArray(runCalls.runId, forget.slice(i, i + 10_000)));
  }
  async function writeBatch(writes: Write[]): Promise<void> {
    try {
      await db.transaction((tx) => writeAll(tx, writes));
    } catch (e) {
      if (writes.length === 1) return failed(writes[0], e);
      // One write that fails takes none of the others with it: each is tried on its own.
      for (const w of writes) await db.transaction((tx) => writeAll(tx, [w])).catch((e: unknown) => failed(w, e));
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
  async function now(write: ((tx: Orm<typeof schema>) => Promise<unknown>) | { journal: JournalEntry }): Promise<void> {
    const w: Write = typeof write === "function" ? { apply: write } : write;
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
      later({ what: `the start of run ${row.id}`, start: values });
    },
    /**
     * finishRun writes what a run ended with, before this turn of the event loop is over; with
     * forget, its journal goes in the same transaction (an ended run never resumes).
     */
    finishRun(
      id: string,
      fields: Required<Pick<NewRun, Exclude<FinishColumn, ResumeColumn>>> & Partial<Pick<NewRun, ResumeColumn>>,
      forget = false,
    ): void {
      const values = { attempt: 1, attempts: null, unjournaledCalls: 0, ...fields };
      later({ what: `the end of run ${id}`, finish: { ...values, id }, forget });
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
    /**
     * runsInFlight are the runs recorded as queued or running: of one executor when `executor` is
     * given, or, with `except`, of every executor but those (the live ones: what is left are the
     * runs of executors that died).
     */
    async runsInFlight(which: { executor?: string; except?: string[] } = {}): Promise<RunRow[]> {
      await flush();
      const where = [inArray(runs.status, inFlight)];
      if (which.executor !== undefined) where.push(eq(runs.executor, which.executor));
      if (which.except?.length) where.push(notInArray(runs.executor, which.except));
      return orm
        .select()
        .from(runs)
        .where(and(...where))
        .orderBy(runs.createdAt);
    },
    /** enqueueRun records a run that waits in the queue for an executor to claim it, durably before it answers. */
    enqueueRun(row: NewRun): Promise<void> {
      return now((tx) => tx.insert(runs).values({ ...retryDefaults, ...row, status: RunStatus.QUEUED, executor: "" }));
    },
    /**
     * claimQueued claims up to `limit` of the oldest queued runs for `executor` (PostgreSQL only):
     * `FOR UPDATE SKIP LOCKED`, so executors claiming at once take different runs and none waits.
     */
    async claimQueued(executor: string, limit: number, startedAt: number): Promise<RunRow[]> {
      await flush();
      const oldest = sql`(SELECT id FROM ${runs} WHERE status = ${RunStatus.QUEUED} AND executor = '' ORDER BY created_at LIMIT ${limit} FOR UPDATE SKIP LOCKED)`;
      // One statement, atomic by itself (an executor polls this every 250 ms: no BEGIN and COMMIT around it).
      return orm.update(runs).set({ executor, status: RunStatus.RUNNING, startedAt }).where(inArray(runs.id, oldest)).returning();
    },
    /** requeue gives back a run this executor claimed but could not start (its account at its limit). */
    requeue(id: string, executor: string): Promise<void> {
      return now((tx) =>
        tx
          .update(runs)
          .set({ executor: "", status: RunStatus.QUEUED, startedAt: null })
          .where(and(eq(runs.id, id), eq(runs.executor, executor), eq(runs.attempt, 1))),
      );
    },
    /** notMine are those of `ids` recorded as in flight on another executor than `executor` (taken over). */
    async notMine(ids: string[], executor: string): Promise<string[]> {
      if (ids.length === 0) return [];
      await flush();
      const rows = await orm
        .select({ id: runs.id })
        .from(runs)
        .where(and(inArray(runs.id, ids), ne(runs.executor, executor)));
      return rows.map((r) => r.id);
    },
    /**
     * resumeRun records that a run starts its next attempt on `executor`, if its record is still in
     * flight at attempt `from`: it answers false when another executor resumed it first, or it ended.
     */
    async resumeRun(
      id: string,
      from: number,
      attempt: number,
      attempts: NonNullable<NewRun["attempts"]>,
      startedAt: number,
      executor: string,
    ): Promise<boolean> {
      let claimed = false;
      await now(async (tx) => {
        const rows = await tx
          .update(runs)
          .set({ attempt, attempts, startedAt, executor, status: RunStatus.RUNNING })
          .where(and(eq(runs.id, id), eq(runs.attempt, from), inArray(runs.status, inFlight)))
          .returning({ id: runs.id });
        claimed = rows.length > 0;
      });
      return claimed;
    },
    /**
     * failRun ends a run that has no process (one interrupted and never resumed), unless its record
     * says it ended meanwhile (resumed by a caller who came back, it ran to its end).
     */
    failRun(id: string, attempt: number, status: number, error: { type: string; message: string; traceback: string }): Promise<void> {
      const finishedAt = Date.now();
      return now(async (tx) => {
        // Only at the attempt the caller saw: a run another executor resumed meanwhile is left alone, journal and all.
        const ended = await tx
          .update(runs)
          .set({ status, error, finishedAt, durationMs: sql`${finishedAt} - ${runs.createdAt}` })
          .where(and(eq(runs.id, id), eq(runs.attempt, attempt), inArray(runs.status, inFlight)))
          .returning({ id: runs.id });
        if (ended.length > 0) await forgetJournal(tx, id);
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
      return now({ journal: e });
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
