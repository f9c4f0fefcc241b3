import { index, integer, real, sqliteTable, text } from "drizzle-orm/sqlite-core";

/**
 * calls are the records of every model call. Request and response bodies are stored as JSON with the
 * call's secret values already blanked out; they are read with the call, never queried on their own.
 */
export const calls = sqliteTable(
  "calls",
  {
    id: text("id").primaryKey(),
    accountId: text("account_id").notNull(),
    sessionId: text("session_id").notNull(),
    runId: text("run_id").notNull(),
    workflowRefName: text("workflow_ref_name").notNull(),
    intent: text("intent").notNull(),
    application: text("application").notNull(),
    kind: text("kind").notNull(),
    model: text("model").notNull(),
    provider: text("provider").notNull(),
    attempts: integer("attempts").notNull(),
    /** attemptLog is every upstream attempt: model, provider, status or error, duration. */
    attemptLog: text("attempt_log", { mode: "json" }).$type<AttemptRecord[]>(),
    status: text("status").notNull(),
    error: text("error").notNull(),
    latencyMs: real("latency_ms").notNull(),
    ttftMs: real("ttft_ms").notNull(),
    promptTokens: integer("prompt_tokens").notNull(),
    completionTokens: integer("completion_tokens").notNull(),
    request: text("request", { mode: "json" }),
    response: text("response", { mode: "json" }),
    createdAt: real("created_at").notNull(),
  },
  (t) => [
    index("calls_account_id_session_id_created_at_idx").on(t.accountId, t.sessionId, t.createdAt),
    index("calls_account_id_run_id_idx").on(t.accountId, t.runId),
    index("calls_account_id_created_at_idx").on(t.accountId, t.createdAt),
  ],
);

/** AttemptRecord is one upstream attempt of a call. */
export interface AttemptRecord {
  model: string;
  provider: string;
  /** status is the upstream HTTP status (0 when none came). */
  status: number;
  error: string;
  durationMs: number;
}
