// The ModelProxy's tables in PostgreSQL: the same tables, columns and indexes as schema.ts, in the
// PostgreSQL schema `modelproxy`. Migrations: migrations-pg/ (`npm run db:generate`).
//
// Types, chosen so a row reads as the same TypeScript object as from SQLite (services/shared/
// schema-parity.ts fails `tsc` otherwise): reals (latencies, and created_at, which is a real in
// SQLite too) are `double precision`; JSON is `json` with the same `$type` (kept as written, like
// SQLite's text: key order and "\u0000" in strings survive, which `jsonb` would not); token counts stay `integer`.
import { doublePrecision, index, integer, json, pgSchema, text } from "drizzle-orm/pg-core";
import type { AttemptRecord } from "./schema.js";

/** modelproxy is the PostgreSQL schema holding the ModelProxy's tables. */
export const modelproxy = pgSchema("modelproxy");

/** calls are the records of every model call, their bodies already blanked of secret values. */
export const calls = modelproxy.table(
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
    attemptLog: json("attempt_log").$type<AttemptRecord[]>(),
    status: text("status").notNull(),
    error: text("error").notNull(),
    latencyMs: doublePrecision("latency_ms").notNull(),
    ttftMs: doublePrecision("ttft_ms").notNull(),
    promptTokens: integer("prompt_tokens").notNull(),
    completionTokens: integer("completion_tokens").notNull(),
    request: json("request"),
    response: json("response"),
    createdAt: doublePrecision("created_at").notNull(),
  },
  (t) => [
    index("calls_account_id_session_id_created_at_idx").on(t.accountId, t.sessionId, t.createdAt),
    index("calls_account_id_run_id_idx").on(t.accountId, t.runId),
    index("calls_account_id_created_at_idx").on(t.accountId, t.createdAt),
  ],
);
