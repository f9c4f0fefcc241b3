// The Registry's tables in PostgreSQL: the same tables, columns, keys and indexes as schema.ts, in
// the PostgreSQL schema `registry`. Migrations: migrations-pg/ (`npm run db:generate`).
//
// Types, chosen so a row reads as the same TypeScript object as from SQLite (services/shared/
// schema-parity.ts fails `tsc` otherwise):
// - millisecond timestamps (integer in SQLite) are `bigint` read as numbers: they pass 2^31;
// - `integer(mode: "boolean")` is `boolean`;
// - JSON (`text(mode: "json")`) is `json` with the same `$type`: kept as written, like SQLite's text
//   (`jsonb` would lose key order and reject "\u0000" in strings);
// - other integers (version numbers, timeouts in seconds, enums) stay `integer`.
// Every service's tables live in a PostgreSQL schema named after it, so the four services can share
// one database (SHAKER_DATABASE_URL) with their names apart, as their SQLite files keep them apart.
import { sql } from "drizzle-orm";
import { bigint, boolean, index, integer, json, pgSchema, primaryKey, text, uniqueIndex } from "drizzle-orm/pg-core";

/** registry is the PostgreSQL schema holding the Registry's tables. */
export const registry = pgSchema("registry");

/** accounts are tenants; every other row belongs to one. */
export const accounts = registry.table("accounts", {
  id: text("id").primaryKey(),
  name: text("name").notNull().unique(),
  admin: boolean("admin").notNull().default(false),
  createdAt: bigint("created_at", { mode: "number" }).notNull(),
});

/** apiKeys store only a SHA-256 of each key. */
export const apiKeys = registry.table(
  "api_keys",
  {
    id: text("id").primaryKey(),
    accountId: text("account_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    prefix: text("prefix").notNull(),
    hash: text("hash").notNull().unique(),
    createdAt: bigint("created_at", { mode: "number" }).notNull(),
    revokedAt: bigint("revoked_at", { mode: "number" }),
  },
  (t) => [index("api_keys_account_id_idx").on(t.accountId)],
);

/** workflows are named per account; a deleted one keeps its row but frees the name. */
export const workflows = registry.table(
  "workflows",
  {
    id: text("id").primaryKey(),
    accountId: text("account_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    refName: text("ref_name").notNull(),
    createdAt: bigint("created_at", { mode: "number" }).notNull(),
    updatedAt: bigint("updated_at", { mode: "number" }).notNull(),
    deletedAt: bigint("deleted_at", { mode: "number" }),
  },
  (t) => [uniqueIndex("workflows_account_id_ref_name_idx").on(t.accountId, t.refName).where(sql`deleted_at IS NULL`)],
);

/** workflowVersions are immutable once written. */
export const workflowVersions = registry.table(
  "workflow_versions",
  {
    id: text("id").primaryKey(),
    workflowId: text("workflow_id")
      .notNull()
      .references(() => workflows.id, { onDelete: "cascade" }),
    major: integer("major").notNull(),
    minor: integer("minor").notNull(),
    patch: integer("patch").notNull(),
    workflowName: text("workflow_name").notNull(),
    description: text("description").notNull().default(""),
    script: text("script").notNull(),
    inputSchema: json("input_schema"),
    outputSchema: json("output_schema"),
    env: json("env").$type<Record<string, string>>().notNull(),
    timeoutSeconds: integer("timeout_seconds").notNull(),
    executionMode: integer("execution_mode").notNull(),
    datastores: json("datastores").$type<{ name: string; write: boolean }[]>().notNull(),
    notes: text("notes").notNull().default(""),
    published: boolean("published").notNull(),
    createdAt: bigint("created_at", { mode: "number" }).notNull(),
  },
  (t) => [uniqueIndex("workflow_versions_workflow_id_major_minor_patch_idx").on(t.workflowId, t.major, t.minor, t.patch)],
);

/** accessories are JSON documents stored with a version, under a normalised key. */
export const accessories = registry.table(
  "accessories",
  {
    versionId: text("version_id")
      .notNull()
      .references(() => workflowVersions.id, { onDelete: "cascade" }),
    key: text("key").notNull(),
    originalKey: text("original_key").notNull(),
    content: text("content").notNull(),
  },
  (t) => [primaryKey({ columns: [t.versionId, t.key] })],
);

/** nodes are the processes of this Shaker that said they are alive (see schema.ts). */
export const nodes = registry.table("nodes", {
  id: text("id").primaryKey(),
  services: json("services").$type<string[]>().notNull(),
  url: text("url").notNull(),
  capacity: integer("capacity").notNull(),
  runsInFlight: integer("runs_in_flight").notNull(),
  startedAt: bigint("started_at", { mode: "number" }).notNull(),
  lastHeartbeat: bigint("last_heartbeat", { mode: "number" }).notNull(),
});
