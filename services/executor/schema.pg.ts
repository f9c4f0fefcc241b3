// The Executor's tables in PostgreSQL: the same tables, columns, keys and indexes as schema.ts, in
// the PostgreSQL schema `executor`. Migrations: migrations-pg/ (`npm run db:generate`).
//
// Types, chosen so a row reads as the same TypeScript object as from SQLite (services/shared/
// schema-parity.ts fails `tsc` otherwise):
// - millisecond timestamps and durations (created_at, started_at, finished_at, timeout_ms,
//   run_calls.created_at) are `bigint` read as numbers: they pass 2^31;
// - JSON is `json` with the same `$type`: kept as the text it was written as, like SQLite's, so it
//   keeps its key order and takes "\u0000" in strings (which `jsonb` rejects);
// - blobs are `bytea` (Buffers); duration_ms (a real) is `double precision`;
// - the 0/1 flags (detached, has_secrets, journaled) are plain integers in schema.ts, read as
//   numbers, so they stay `integer` here: making them booleans would change the row's shape.
import { bigint, doublePrecision, index, integer, json, pgSchema, primaryKey, text } from "drizzle-orm/pg-core";
import { bytea } from "../shared/pg-columns.js";

/** executor is the PostgreSQL schema holding the Executor's tables. */
export const executor = pgSchema("executor");

/** runs are the records of every run (see schema.ts). */
export const runs = executor.table(
  "runs",
  {
    id: text("id").primaryKey(),
    accountId: text("account_id").notNull(),
    workflowRefName: text("workflow_ref_name").notNull(),
    version: text("version").notNull(),
    versionId: text("version_id").notNull(),
    sessionId: text("session_id").notNull(),
    status: integer("status").notNull(),
    input: json("input"),
    metadata: json("metadata").$type<Record<string, unknown>>(),
    output: json("output"),
    error: json("error").$type<{ type: string; message: string; traceback: string }>(),
    createdAt: bigint("created_at", { mode: "number" }).notNull(),
    startedAt: bigint("started_at", { mode: "number" }),
    finishedAt: bigint("finished_at", { mode: "number" }),
    emitted: json("emitted").$type<{ seq: number; value: unknown; time: number }[]>(),
    logs: json("logs").$type<{ level: number; message: string; fields: Record<string, unknown>; time: number; source: string }[]>(),
    httpCalls:
      json("http_calls").$type<{ method: string; host: string; status: number; durationMs: number; error: string; time: number }[]>(),
    warnings: json("warnings").$type<string[]>(),
    parentRunId: text("parent_run_id").notNull().default(""),
    depth: integer("depth").notNull().default(0),
    promptTokens: integer("prompt_tokens").notNull().default(0),
    completionTokens: integer("completion_tokens").notNull().default(0),
    durationMs: doublePrecision("duration_ms"),
    idempotencyKey: text("idempotency_key").notNull().default(""),
    requestHash: text("request_hash").notNull().default(""),
    detached: integer("detached").notNull().default(0),
    hasSecrets: integer("has_secrets").notNull().default(0),
    timeoutMs: bigint("timeout_ms", { mode: "number" }).notNull().default(0),
    resume: json("resume").$type<{ messages: unknown[]; params: Record<string, unknown>; hasInput: boolean }>(),
    attempt: integer("attempt").notNull().default(1),
    attempts: json("attempts").$type<{ attempt: number; startedAt: number; endedAt: number; interrupted: boolean }[]>(),
    unjournaledCalls: integer("unjournaled_calls").notNull().default(0),
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

/** run_calls is the journal of the runs in flight (see schema.ts). */
export const runCalls = executor.table(
  "run_calls",
  {
    runId: text("run_id").notNull(),
    seq: integer("seq").notNull(),
    method: text("method").notNull(),
    requestHash: text("request_hash").notNull(),
    journaled: integer("journaled").notNull(),
    messages: bytea("messages"),
    error: json("error").$type<{ code: number; message: string }>(),
    createdAt: bigint("created_at", { mode: "number" }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.runId, t.seq] })],
);
