import { createHash } from "node:crypto";
import { and, asc, count, desc, eq, isNull, type SQL } from "drizzle-orm";
import { type Orm, openServiceDatabase } from "../shared/db.js";
import { newId } from "../shared/ids.js";
import { createClusterStore } from "./cluster.js";
import { normaliseAccessoryKey } from "./rules.js";
import * as schema from "./schema.js";
import * as pgSchema from "./schema.pg.js";

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
export type RegistryStore = Awaited<ReturnType<typeof createRegistryStore>>;

// SQLite runs transactions one at a time; PostgreSQL runs them side by side. There, two uploads to
// one workflow at once are put one after the other by the lock the update of the workflow's row
// takes, and the second then numbers its version after the first's (each statement sees what was
// committed before it). Two first uploads of one workflow both create it: the second breaks the
// unique name and runs again, finding the first's workflow.
const uploadAttempts = 3;

/** isUniqueViolation tells PostgreSQL's refusal of a write by a unique index (drizzle wraps the driver's error). */
function isUniqueViolation(e: unknown): boolean {
  return (e as { cause?: { code?: unknown } }).cause?.code === "23505";
}

/**
 * createRegistryStore opens the Registry's database: a SQLite file (":memory:" for tests) or a
 * postgres:// URL.
 */
export async function createRegistryStore(location: string, options: { poolSize?: number } = {}) {
  const db = await openServiceDatabase({ service: "registry", location, schema, pgSchema, poolSize: options.poolSize });
  const { orm } = db;
  const { accounts, apiKeys, workflows, workflowVersions, accessories } = db.tables;

  // Counts this process's writes to workflows, versions and accessories (see RegistryStore.workflowsWritten).
  let workflowWrites = 0;

  async function first<T>(rows: Promise<T[]>): Promise<T | undefined> {
    return (await rows)[0];
  }

  // The queries on every invoke's path (resolving `workflow:<ref>`) and in an upload's transaction,
  // run on the connection they are given (the transaction's, in one).
  const liveWorkflow = (q: Orm<typeof schema>, accountId: string, refName: string) =>
    first(
      q
        .select()
        .from(workflows)
        .where(and(eq(workflows.accountId, accountId), eq(workflows.refName, refName), isNull(workflows.deletedAt)))
        .limit(1),
    );
  const latestVersion = (q: Orm<typeof schema>, workflowId: string, publishedOnly: boolean) => {
    const ofWorkflow = eq(workflowVersions.workflowId, workflowId);
    return first(
      q
        .select()
        .from(workflowVersions)
        .where(publishedOnly ? and(ofWorkflow, eq(workflowVersions.published, true)) : ofWorkflow)
        .orderBy(desc(workflowVersions.major), desc(workflowVersions.minor), desc(workflowVersions.patch))
        .limit(1),
    );
  };
  /** accessoriesOf lists a version's accessories: each key as uploaded, and its content as JSON text. */
  const accessoriesOf = (q: Orm<typeof schema>, versionId: string) =>
    q.select({ key: accessories.originalKey, content: accessories.content }).from(accessories).where(eq(accessories.versionId, versionId));
  const accountByName = (name: string) => first(orm.select().from(accounts).where(eq(accounts.name, name)).limit(1));
  const keyWhere = (where: SQL | undefined) => first(orm.select().from(apiKeys).where(where).limit(1));

  return {
    close: () => db.close(),
    /** cluster holds the membership's queries (cluster.ts), on the same database. */
    cluster: createClusterStore(db),
    /**
     * othersWrite says whether other processes may write the workflows too (PostgreSQL, shared by every
     * Registry of one Shaker), so that workflowsWritten alone does not say when what was read changed.
     */
    othersWrite: db.dialect === "postgresql",

    accountByName,
    accountById(id: string): Promise<AccountRow | undefined> {
      return first(orm.select().from(accounts).where(eq(accounts.id, id)).limit(1));
    },
    /** ensureAccount returns the named account, creating it when absent. */
    async ensureAccount(name: string, admin: boolean): Promise<AccountRow> {
      // Two processes may create it at once: the second keeps the first one's row.
      await orm
        .insert(accounts)
        .values({ id: newId("acct"), name, admin, createdAt: Date.now() })
        .onConflictDoNothing();
      return (await accountByName(name))!;
    },

    async insertKey(accountId: string, apiKey: string): Promise<ApiKeyRow> {
      const row = {
        id: newId("key"),
        accountId,
        prefix: apiKey.slice(0, 14),
        hash: hashKey(apiKey),
        createdAt: Date.now(),
        revokedAt: null,
      };
      await orm.insert(apiKeys).values(row).onConflictDoNothing();
      return (await keyWhere(eq(apiKeys.hash, row.hash)))!;
    },
    /** ownerOfKey returns the live key and its account, or undefined. */
    ownerOfKey(apiKey: string): Promise<{ key: ApiKeyRow; account: AccountRow } | undefined> {
      return first(
        orm
          .select({ key: apiKeys, account: accounts })
          .from(apiKeys)
          .innerJoin(accounts, eq(accounts.id, apiKeys.accountId))
          .where(and(eq(apiKeys.hash, hashKey(apiKey)), isNull(apiKeys.revokedAt)))
          .limit(1),
      );
    },
    /** allKeys lists every account's keys with the account's name, by account then age. */
    allKeys(): Promise<{ key: ApiKeyRow; accountName: string }[]> {
      return orm
        .select({ key: apiKeys, accountName: accounts.name })
        .from(apiKeys)
        .innerJoin(accounts, eq(accounts.id, apiKeys.accountId))
        .orderBy(asc(accounts.name), asc(apiKeys.createdAt), asc(apiKeys.id));
    },
    keysOf(accountId: string): Promise<ApiKeyRow[]> {
      return orm.select().from(apiKeys).where(eq(apiKeys.accountId, accountId)).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id));
    },
    /** keyById finds a key by id, or by prefix when exactly one key has that prefix. */
    async keyById(idOrPrefix: string): Promise<ApiKeyRow | undefined> {
      const byId = await keyWhere(eq(apiKeys.id, idOrPrefix));
      if (byId) return byId;
      const byPrefix = await orm.select().from(apiKeys).where(eq(apiKeys.prefix, idOrPrefix)).limit(2);
      return byPrefix.length === 1 ? byPrefix[0] : undefined;
    },
    async revokeKey(id: string): Promise<void> {
      await orm
        .update(apiKeys)
        .set({ revokedAt: Date.now() })
        .where(and(eq(apiKeys.id, id), isNull(apiKeys.revokedAt)));
    },

    workflow(accountId: string, refName: string): Promise<WorkflowRow | undefined> {
      return liveWorkflow(orm, accountId, refName);
    },
    /** listWorkflows pages an account's live workflows, the last written first (a name is unique among them). */
    async listWorkflows(accountId: string, offset: number, limit: number): Promise<{ rows: WorkflowRow[]; total: number }> {
      const live = and(eq(workflows.accountId, accountId), isNull(workflows.deletedAt));
      const rows = await orm
        .select()
        .from(workflows)
        .where(live)
        .orderBy(desc(workflows.updatedAt), asc(workflows.refName))
        .limit(limit)
        .offset(offset);
      const [{ n }] = await orm.select({ n: count() }).from(workflows).where(live);
      return { rows, total: n };
    },
    async deleteWorkflow(id: string): Promise<void> {
      await orm.update(workflows).set({ deletedAt: Date.now() }).where(eq(workflows.id, id));
      workflowWrites++;
    },
    /**
     * workflowsWritten counts this process's writes to workflows, versions and accessories: a reader
     * that keeps what it read knows it is still current while the count is unchanged, unless
     * othersWrite. (`shaker keys` writes only keys.)
     */
    workflowsWritten(): number {
      return workflowWrites;
    },

    versions(workflowId: string): Promise<VersionRow[]> {
      return orm
        .select()
        .from(workflowVersions)
        .where(eq(workflowVersions.workflowId, workflowId))
        .orderBy(desc(workflowVersions.major), desc(workflowVersions.minor), desc(workflowVersions.patch));
    },
    /** latestVersion is the highest version, published only when asked. */
    latestVersion(workflowId: string, publishedOnly: boolean): Promise<VersionRow | undefined> {
      return latestVersion(orm, workflowId, publishedOnly);
    },
    version(workflowId: string, major: number, minor: number, patch: number): Promise<VersionRow | undefined> {
      return first(
        orm
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
          .limit(1),
      );
    },
    /** versionById returns a version with its workflow, deleted workflows included (runs in flight need them). */
    versionById(id: string): Promise<{ version: VersionRow; workflow: WorkflowRow } | undefined> {
      return first(
        orm
          .select({ version: workflowVersions, workflow: workflows })
          .from(workflowVersions)
          .innerJoin(workflows, eq(workflows.id, workflowVersions.workflowId))
          .where(eq(workflowVersions.id, id))
          .limit(1),
      );
    },
    async accessoryKeys(versionId: string): Promise<string[]> {
      const rows = await orm.select({ key: accessories.originalKey }).from(accessories).where(eq(accessories.versionId, versionId));
      return rows.map((r) => r.key);
    },
    accessory(versionId: string, key: string): Promise<{ key: string; content: string } | undefined> {
      return first(
        orm
          .select({ key: accessories.originalKey, content: accessories.content })
          .from(accessories)
          .where(and(eq(accessories.versionId, versionId), eq(accessories.key, normaliseAccessoryKey(key))))
          .limit(1),
      );
    },

    /**
     * insertVersion stores a version (and creates the workflow on first upload) in one transaction,
     * so a failed upload stores nothing. nextVersion picks the number from the current latest. When
     * `unchanged` says the latest version (published or not) already is this one, nothing is written
     * and that version is returned with `unchanged` true; it reads that version's accessories through
     * the function it is given, inside the transaction (another connection could wait on this one's
     * pool).
     */
    async insertVersion(
      accountId: string,
      refName: string,
      nextVersion: (latest: VersionRow | undefined) => [number, number, number],
      fields: NewVersion,
      accessoryList: { key: string; content: string }[],
      unchanged?: (latest: VersionRow, accessoriesOf: () => Promise<{ key: string; content: string }[]>) => Promise<boolean>,
    ): Promise<{ workflow: WorkflowRow; version: VersionRow; created: boolean; unchanged: boolean }> {
      const attempt = () =>
        db.transaction(async (tx) => {
          const now = Date.now();
          let workflow = await liveWorkflow(tx, accountId, refName);
          const created = !workflow;
          if (workflow && unchanged) {
            const latest = await latestVersion(tx, workflow.id, false);
            if (latest && (await unchanged(latest, () => accessoriesOf(tx, latest.id))))
              return { workflow, version: latest, created, unchanged: true };
          }
          if (!workflow) {
            workflow = { id: newId("wf"), accountId, refName, createdAt: now, updatedAt: now, deletedAt: null };
            await tx.insert(workflows).values(workflow);
          } else {
            await tx.update(workflows).set({ updatedAt: now }).where(eq(workflows.id, workflow.id));
          }
          const [major, minor, patch] = nextVersion(await latestVersion(tx, workflow.id, false));
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
          await tx.insert(workflowVersions).values(version);
          if (accessoryList.length > 0) {
            await tx.insert(accessories).values(
              accessoryList.map((a) => ({
                versionId: version.id,
                key: normaliseAccessoryKey(a.key),
                originalKey: a.key,
                content: a.content,
              })),
            );
          }
          return { workflow, version, created, unchanged: false };
        });
      for (let n = 1; ; n++) {
        try {
          const stored = await attempt();
          if (!stored.unchanged) workflowWrites++;
          return stored;
        } catch (e) {
          if (n >= uploadAttempts || !isUniqueViolation(e)) throw e;
        }
      }
    },
  };
}
