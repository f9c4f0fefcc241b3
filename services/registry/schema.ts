import { sql } from "drizzle-orm";
import { index, integer, primaryKey, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

/** accounts are tenants; every other row belongs to one. */
export const accounts = sqliteTable("accounts", {
  id: text("id").primaryKey(),
  name: text("name").notNull().unique(),
  admin: integer("admin", { mode: "boolean" }).notNull().default(false),
  createdAt: integer("created_at").notNull(),
});

/** apiKeys store only a SHA-256 of each key: keys are 192-bit random, so a slow hash adds nothing. */
export const apiKeys = sqliteTable(
  "api_keys",
  {
    id: text("id").primaryKey(),
    accountId: text("account_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    prefix: text("prefix").notNull(),
    hash: text("hash").notNull().unique(),
    createdAt: integer("created_at").notNull(),
    revokedAt: integer("revoked_at"),
  },
  (t) => [index("api_keys_account_id_idx").on(t.accountId)],
);

/** workflows are named per account; a deleted one keeps its row (runs still name it) but frees the name. */
export const workflows = sqliteTable(
  "workflows",
  {
    id: text("id").primaryKey(),
    accountId: text("account_id")
      .notNull()
      .references(() => accounts.id, { onDelete: "cascade" }),
    refName: text("ref_name").notNull(),
    createdAt: integer("created_at").notNull(),
    updatedAt: integer("updated_at").notNull(),
    deletedAt: integer("deleted_at"),
  },
  (t) => [uniqueIndex("workflows_account_id_ref_name_idx").on(t.accountId, t.refName).where(sql`deleted_at IS NULL`)],
);

/** workflowVersions are immutable once written. */
export const workflowVersions = sqliteTable(
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
    inputSchema: text("input_schema", { mode: "json" }),
    outputSchema: text("output_schema", { mode: "json" }),
    env: text("env", { mode: "json" }).$type<Record<string, string>>().notNull(),
    timeoutSeconds: integer("timeout_seconds").notNull(),
    executionMode: integer("execution_mode").notNull(),
    datastores: text("datastores", { mode: "json" }).$type<{ name: string; write: boolean }[]>().notNull(),
    notes: text("notes").notNull().default(""),
    published: integer("published", { mode: "boolean" }).notNull(),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [uniqueIndex("workflow_versions_workflow_id_major_minor_patch_idx").on(t.workflowId, t.major, t.minor, t.patch)],
);

/** accessories are JSON documents stored with a version, under a normalised key. */
export const accessories = sqliteTable(
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

/**
 * nodes are the processes of this Shaker that said they are alive (services/registry/cluster.ts):
 * what each runs, where, and its executor's load. A node silent for an hour is forgotten.
 */
export const nodes = sqliteTable("nodes", {
  id: text("id").primaryKey(),
  services: text("services", { mode: "json" }).$type<string[]>().notNull(),
  url: text("url").notNull(),
  capacity: integer("capacity").notNull(),
  runsInFlight: integer("runs_in_flight").notNull(),
  startedAt: integer("started_at").notNull(),
  lastHeartbeat: integer("last_heartbeat").notNull(),
});
