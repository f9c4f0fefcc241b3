import { blob, index, integer, primaryKey, real, sqliteTable, text } from "drizzle-orm/sqlite-core";

/**
 * runs are the records of every run. Emitted values, logs and HTTP calls are written once, when the
 * run ends, as JSON: they are read with the run, never queried on their own.
 */
export const runs = sqliteTable(
  "runs",
  {
    id: text("id").primaryKey(),
    accountId: text("account_id").notNull(),
    workflowRefName: text("workflow_ref_name").notNull(),
    version: text("version").notNull(),
    versionId: text("version_id").notNull(),
    sessionId: text("session_id").notNull(),
    status: integer("status").notNull(),
    input: text("input", { mode: "json" }),
    metadata: text("metadata", { mode: "json" }).$type<Record<string, unknown>>(),
    output: text("output", { mode: "json" }),
    error: text("error", { mode: "json" }).$type<{ type: string; message: string; traceback: string }>(),
    createdAt: integer("created_at").notNull(),
    startedAt: integer("started_at"),
    finishedAt: integer("finished_at"),
    emitted: text("emitted", { mode: "json" }).$type<{ seq: number; value: unknown; time: number }[]>(),
    logs: text("logs", { mode: "json" }).$type<
      { level: number; message: string; fields: Record<string, unknown>; time: number; source: string }[]
    >(),
    httpCalls: text("http_calls", { mode: "json" }).$type<
      { method: string; host: string; status: number; durationMs: number; error: string; time: number }[]
    >(),
    warnings: text("warnings", { mode: "json" }).$type<string[]>(),
    parentRunId: text("parent_run_id").notNull().default(""),
    depth: integer("depth").notNull().default(0),
    promptTokens: integer("prompt_tokens").notNull().default(0),
    completionTokens: integer("completion_tokens").notNull().default(0),
    durationMs: real("duration_ms"),
    /** idempotencyKey is "user:<Idempotency-Key>", or "call:<parent run>:<seq>" for a nested run; "" for none. */
    idempotencyKey: text("idempotency_key").notNull().default(""),
    /** requestHash identifies the caller's request without its secret values (see Invocation.request_hash). */
    requestHash: text("request_hash").notNull().default(""),
    /** detached is 1 for a run nobody waits for (async): it resumes on its own after a crash. */
    detached: integer("detached").notNull().default(0),
    /** hasSecrets is 1 when the run was given secrets: it resumes only when its caller brings them again. */
    hasSecrets: integer("has_secrets").notNull().default(0),
    /** timeoutMs is the run's timeout: how long an interrupted run waits for its caller to come back. */
    timeoutMs: integer("timeout_ms").notNull().default(0),
    /** resume is what a resumed run's ctx is built from besides input and metadata; null when it had secrets. */
    resume: text("resume", { mode: "json" }).$type<{ messages: unknown[]; params: Record<string, unknown>; hasInput: boolean }>(),
    attempt: integer("attempt").notNull().default(1),
    /** attempts are the earlier executions' timings (milliseconds since the epoch). */
    attempts: text("attempts", { mode: "json" }).$type<{ attempt: number; startedAt: number; endedAt: number; interrupted: boolean }[]>(),
    unjournaledCalls: integer("unjournaled_calls").notNull().default(0),
    /** executor names the Executor that ran the latest attempt. */
    executor: text("executor").notNull().default(""),
  },
  (t) => [
    index("runs_account_id_created_at_idx").on(t.accountId, t.createdAt),
    index("runs_session_id_idx").on(t.sessionId),
    index("runs_account_id_workflow_ref_name_created_at_idx").on(t.accountId, t.workflowRefName, t.createdAt),
    index("runs_status_idx").on(t.status),
    index("runs_account_id_idempotency_key_idx").on(t.accountId, t.idempotencyKey),
    index("runs_account_id_request_hash_idx").on(t.accountId, t.requestHash),
  ],
);

/**
 * run_calls is the journal of the runs in flight: the result of every ctx call that reached the
 * platform, by its sequence number within its run, written before the run's process gets it. A run
 * resumed after a crash gets these results again instead of calling anything. A run's entries are
 * deleted when it ends.
 */
export const runCalls = sqliteTable(
  "run_calls",
  {
    runId: text("run_id").notNull(),
    seq: integer("seq").notNull(),
    /** method is "<service type name>/<method name>". */
    method: text("method").notNull(),
    /** requestHash is the SHA-256 of the request message's JSON; "" for an unjournaled call. */
    requestHash: text("request_hash").notNull(),
    /** journaled is 0 when the call held a secret value: nothing of it is kept, and a resumed run makes it again. */
    journaled: integer("journaled").notNull(),
    /** messages are the response messages' JSON texts, each preceded by its 4-byte length. */
    messages: blob("messages", { mode: "buffer" }),
    /** error is the call's error, when it failed. */
    error: text("error", { mode: "json" }).$type<{ code: number; message: string }>(),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.seq] })],
);
