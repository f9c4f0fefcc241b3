import { index, integer, real, sqliteTable, text } from "drizzle-orm/sqlite-core";

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
  },
  (t) => [
    index("runs_account_id_created_at_idx").on(t.accountId, t.createdAt),
    index("runs_session_id_idx").on(t.sessionId),
    index("runs_account_id_workflow_ref_name_created_at_idx").on(t.accountId, t.workflowRefName, t.createdAt),
    index("runs_status_idx").on(t.status),
  ],
);
