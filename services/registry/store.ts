import { createHash } from "node:crypto";
import { and, asc, count, desc, eq, isNull, sql } from "drizzle-orm";
import { type Db, openDatabase } from "../shared/db.js";
import { newId } from "../shared/ids.js";
import { normaliseAccessoryKey } from "./rules.js";
import * as schema from "./schema.js";

const migrationsFolder = new URL("./migrations", import.meta.url).pathname;

export type AccountRow = typeof schema.accounts.$inferSelect;
export type ApiKeyRow = typeof schema.apiKeys.$inferSelect;
export type WorkflowRow = typeof schema.workflows.$inferSelect;
export type VersionRow = typeof schema.workflowVersions.$inferSelect;
export type NewVersion = Omit<typeof schema.workflowVersions.$inferInsert, "id" | "workflowId" | "createdAt" | "major" | "minor" | "patch">;

/** hashKey is how API keys are stored and looked up. */
export function hashKey(apiKey: string): string {
  return createHash("sha256").update(apiKey).digest("hex");
}

/** RegistryStore holds every query of the Registry. */
export type RegistryStore = ReturnType<typeof createRegistryStore>;

/** createRegistryStore opens the Registry's database (":memory:" for tests). */
export function createRegistryStore(file: string) {
  const db: Db<typeof schema> = openDatabase({ file, migrationsFolder, schema });
  const { orm } = db;
  const { accounts, apiKeys, workflows, workflowVersions, accessories } = schema;

  function accountByName(name: string): AccountRow | undefined {
    return orm.select().from(accounts).where(eq(accounts.name, name)).get();
  }

  // Counts the writes to workflows, versions and accessories: what was read before a write may be kept
  // (see RegistryStore.workflowsWritten) until the count moves.
  let workflowWrites = 0;

  // The queries on every invoke's path (resolving `workflow:<ref>`), prepared once.
  const liveWorkflowQuery = orm
    .select()
    .from(workflows)
    .where(
      and(
        eq(workflows.accountId, sql.placeholder("accountId")),
        eq(workflows.refName, sql.placeholder("refName")),
        isNull(workflows.deletedAt),
      ),
    )
    .prepare();
  const latestVersionQuery = (publishedOnly: boolean) =>
    orm
      .select()
      .from(workflowVersions)
      .where(
        publishedOnly
          ? and(eq(workflowVersions.workflowId, sql.placeholder("workflowId")), eq(workflowVersions.published, true))
          : eq(workflowVersions.workflowId, sql.placeholder("workflowId")),
      )
      .orderBy(desc(workflowVersions.major), desc(workflowVersions.minor), desc(workflowVersions.patch))
      .limit(1)
      .prepare();
  const latestPublishedQuery = latestVersionQuery(true);
  const latestAnyQuery = latestVersionQuery(false);
  const accessoryKeysQuery = orm
    .select({ key: accessories.originalKey })
    .from(accessories)
    .where(eq(accessories.versionId, sql.placeholder("versionId")))
    .prepare();

  return {
    close: () => db.close(),
    sqlite: db.sqlite,

    accountByName,
    accountById(id: string): AccountRow | undefined {
      return orm.select().from(accounts).where(eq(accounts.id, id)).get();
    },
    /** ensureAccount returns the named account, creating it when absent. */
    ensureAccount(name: string, admin: boolean): AccountRow {
      const existing = accountByName(name);
      if (existing) return existing;
      const row = { id: newId("acct"), name, admin, createdAt: Date.now() };
      orm.insert(accounts).values(row).run();
      return row;
    },

    insertKey(accountId: string, apiKey: string): ApiKeyRow {
      const row = {
        id: newId("key"),
        accountId,
        prefix: apiKey.slice(0, 14),
        hash: hashKey(apiKey),
        createdAt: Date.now(),
        revokedAt: null,
      };
      orm.insert(apiKeys).values(row).onConflictDoNothing().run();
      return orm.select().from(apiKeys).where(eq(apiKeys.hash, row.hash)).get()!;
    },
    /** ownerOfKey returns the live key and its account, or undefined. */
    ownerOfKey(apiKey: string): { key: ApiKeyRow; account: AccountRow } | undefined {
      const row = orm
        .select({ key: apiKeys, account: accounts })
        .from(apiKeys)
        .innerJoin(accounts, eq(accounts.id, apiKeys.accountId))
        .where(and(eq(apiKeys.hash, hashKey(apiKey)), isNull(apiKeys.revokedAt)))
        .get();
      return row;
    },
    /** allKeys lists every account's keys with the account's name, by account then age. */
    allKeys(): { key: ApiKeyRow; accountName: string }[] {
      return orm
        .select({ key: apiKeys, accountName: accounts.name })
        .from(apiKeys)
        .innerJoin(accounts, eq(accounts.id, apiKeys.accountId))
        .orderBy(asc(accounts.name), asc(apiKeys.createdAt))
        .all();
    },
    keysOf(accountId: string): ApiKeyRow[] {
      return orm.select().from(apiKeys).where(eq(apiKeys.accountId, accountId)).orderBy(asc(apiKeys.createdAt)).all();
    },
    /** keyById finds a key by id, or by prefix when exactly one key has that prefix. */
    keyById(idOrPrefix: string): ApiKeyRow | undefined {
      const byId = orm.select().from(apiKeys).where(eq(apiKeys.id, idOrPrefix)).get();
      if (byId) return byId;
      const byPrefix = orm.select().from(apiKeys).where(eq(apiKeys.prefix, idOrPrefix)).limit(2).all();
      return byPrefix.length === 1 ? byPrefix[0] : undefined;
    },
    revokeKey(id: string): void {
      orm
        .update(apiKeys)
        .set({ revokedAt: Date.now() })
        .where(and(eq(apiKeys.id, id), isNull(apiKeys.revokedAt)))
        .run();
    },
    liveKeyCount(): number {
      return orm.select({ n: count() }).from(apiKeys).where(isNull(apiKeys.revokedAt)).get()!.n;
    },

    workflow(accountId: string, refName: string): WorkflowRow | undefined {
      return liveWorkflowQuery.get({ accountId, refName });
    },
    listWorkflows(accountId: string, offset: number, limit: number): { rows: WorkflowRow[]; total: number } {
      const live = and(eq(workflows.accountId, accountId), isNull(workflows.deletedAt));
      const rows = orm
        .select()
        .from(workflows)
        .where(live)
        .orderBy(desc(workflows.updatedAt), desc(sql`rowid`))
        .limit(limit)
        .offset(offset)
        .all();
      const total = orm.select({ n: count() }).from(workflows).where(live).get()!.n;
      return { rows, total };
    },
    deleteWorkflow(id: string): void {
      orm.update(workflows).set({ deletedAt: Date.now() }).where(eq(workflows.id, id)).run();
      workflowWrites++;
    },
    /**
     * workflowsWritten counts the writes to workflows, versions and accessories so far: a reader that
     * keeps what it read knows it is still current while the count is unchanged. (This process is
     * the only writer of these tables; `shaker keys` writes only keys.)
     */
    workflowsWritten(): number {
      return workflowWrites;
    },

    versions(workflowId: string): VersionRow[] {
      return orm
        .select()
        .from(workflowVersions)
        .where(eq(workflowVersions.workflowId, workflowId))
        .orderBy(desc(workflowVersions.major), desc(workflowVersions.minor), desc(workflowVersions.patch))
        .all();
    },
    /** latestVersion is the highest version, published only when asked. */
    latestVersion(workflowId: string, publishedOnly: boolean): VersionRow | undefined {
      return (publishedOnly ? latestPublishedQuery : latestAnyQuery).get({ workflowId });
    },
    version(workflowId: string, major: number, minor: number, patch: number): VersionRow | undefined {
      return orm
        .select()
        .from(workflowVersions)
        .where(
          and(
            eq(workflowVersions.workflowId, workflowId),
            eq(workflowVersions.major, major),
            eq(workflowVersions.minor, minor),
            eq(workflowVersions.patch, patch),
          ),
        )
        .get();
    },
    /** versionById returns a version with its workflow, deleted workflows included (runs in flight need them). */
    versionById(id: string): { version: VersionRow; workflow: WorkflowRow } | undefined {
      return orm
        .select({ version: workflowVersions, workflow: workflows })
        .from(workflowVersions)
        .innerJoin(workflows, eq(workflows.id, workflowVersions.workflowId))
        .where(eq(workflowVersions.id, id))
        .get();
    },
    accessoryKeys(versionId: string): string[] {
      return accessoryKeysQuery.all({ versionId }).map((r) => r.key);
    },
    /** accessoriesOf lists a version's accessories: each key as uploaded, and its content as JSON text. */
    accessoriesOf(versionId: string): { key: string; content: string }[] {
      return orm
        .select({ key: accessories.originalKey, content: accessories.content })
        .from(accessories)
        .where(eq(accessories.versionId, versionId))
        .all();
    },
    accessory(versionId: string, key: string): { key: string; content: string } | undefined {
      return orm
        .select({ key: accessories.originalKey, content: accessories.content })
        .from(accessories)
        .where(and(eq(accessories.versionId, versionId), eq(accessories.key, normaliseAccessoryKey(key))))
        .get();
    },

    /**
     * insertVersion stores a version (and creates the workflow on first upload) in one transaction,
     * so a failed upload stores nothing. nextVersion picks the number from the current latest. When
     * `unchanged` says the latest version (published or not) already is this one, nothing is written
     * and that version is returned with `unchanged` true.
     */
    insertVersion(
      accountId: string,
      refName: string,
      nextVersion: (latest: VersionRow | undefined) => [number, number, number],
      fields: NewVersion,
      accessoryList: { key: string; content: string }[],
      unchanged?: (latest: VersionRow) => boolean,
    ): { workflow: WorkflowRow; version: VersionRow; created: boolean; unchanged: boolean } {
      const stored = db.sqlite.transaction(() => {
        const now = Date.now();
        let workflow = this.workflow(accountId, refName);
        const created = !workflow;
        if (workflow && unchanged) {
          const latest = this.latestVersion(workflow.id, false);
          if (latest && unchanged(latest)) return { workflow, version: latest, created, unchanged: true };
        }
        if (!workflow) {
          workflow = { id: newId("wf"), accountId, refName, createdAt: now, updatedAt: now, deletedAt: null };
          orm.insert(workflows).values(workflow).run();
        } else {
          orm.update(workflows).set({ updatedAt: now }).where(eq(workflows.id, workflow.id)).run();
        }
        const [major, minor, patch] = nextVersion(this.latestVersion(workflow.id, false));
        const version: VersionRow = {
          description: "",
          notes: "",
          inputSchema: null,
          outputSchema: null,
          ...fields,
          id: newId("ver"),
          workflowId: workflow.id,
          major,
          minor,
          patch,
          createdAt: now,
        } as VersionRow;
        orm.insert(workflowVersions).values(version).run();
        for (const a of accessoryList) {
          orm
            .insert(accessories)
            .values({ versionId: version.id, key: normaliseAccessoryKey(a.key), originalKey: a.key, content: a.content })
            .run();
        }
        return { workflow, version, created, unchanged: false };
      })();
      if (!stored.unchanged) workflowWrites++;
      return stored;
    },

    /** checkIntegrity runs SQLite's integrity check. */
    integrityCheck(): string {
      return String(db.sqlite.pragma("integrity_check", { simple: true }));
    },
  };
}
