import { randomBytes } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Column, getTableName, is, type SQL, sql, Table } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { migrate } from "drizzle-orm/node-postgres/migrator";
import { type PgTable, getTableConfig as pgConfig } from "drizzle-orm/pg-core";
import { type SQLiteTable, getTableConfig as sqliteConfig } from "drizzle-orm/sqlite-core";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrationsDir, storedServices } from "../scripts/drizzle.js";
import * as datastore from "../services/datastore/schema.js";
import * as datastorePg from "../services/datastore/schema.pg.js";
import * as executor from "../services/executor/schema.js";
import * as executorPg from "../services/executor/schema.pg.js";
import * as modelproxy from "../services/modelproxy/schema.js";
import * as modelproxyPg from "../services/modelproxy/schema.pg.js";
import * as registry from "../services/registry/schema.js";
import * as registryPg from "../services/registry/schema.pg.js";

// The PostgreSQL side of every service's schema (schema.pg.ts, migrations-pg/), against SQLite's
// and against a real server.
//
// Each service's tables are in a PostgreSQL schema of its own (`registry`, `executor`, `modelproxy`,
// `datastore`): one database can hold the four services, as SHAKER_DATABASE_URL names one, without
// their table names meeting, and a service's tables can be granted, dumped or dropped on their own.
// drizzle's record of applied migrations is one table per service, `drizzle.__drizzle_migrations_<service>`:
// the migrator decides what to apply from the latest entry of its table, so the four services'
// histories must not share one. (It is not kept in the service's own schema: the migrator creates
// that schema before the first migration, whose `CREATE SCHEMA` would then fail.)

const repo = new URL("../", import.meta.url).pathname;
const url = process.env.SHAKER_TEST_DATABASE_URL;

/** The schema modules of each service, SQLite's and PostgreSQL's. */
const modules = {
  registry: [registry, registryPg],
  executor: [executor, executorPg],
  modelproxy: [modelproxy, modelproxyPg],
  datastore: [datastore, datastorePg],
} as const;

/** Columns and indexes only PostgreSQL has: the tsvector FTS5 keeps in SQLite, and its GIN index; the vectors' bytes the exact scan reads. */
const pgOnlyColumns = new Set(["records.search", "records.vector_bytes"]);
const pgOnlyIndexes = new Set(["records_search_idx"]);

/** migrateOptions are the migrator's options for a service (see above). */
function migrateOptions(service: string) {
  return {
    migrationsFolder: `${repo}${migrationsDir(service, "postgresql")}`,
    migrationsSchema: "drizzle",
    migrationsTable: `__drizzle_migrations_${service}`,
  };
}

function tablesOf(module: object): Table[] {
  return Object.values(module).filter((v): v is Table => is(v, Table));
}

/** whereText is an index's WHERE clause as written in the schema. */
function whereText(where: SQL | undefined): string | undefined {
  return where?.queryChunks.map((c) => (typeof c === "object" && c && "value" in c ? String(c.value) : "?")).join("");
}

/** shape is what must match between the two dialects: names, nullability, defaults, keys, indexes. */
function shape(config: ReturnType<typeof sqliteConfig> | ReturnType<typeof pgConfig>) {
  const table = config.name;
  const columns = (config.columns as Column[])
    .filter((c) => !pgOnlyColumns.has(`${table}.${c.name}`))
    .map((c) => ({
      name: c.name,
      notNull: c.notNull,
      primary: c.primary,
      unique: c.isUnique ? c.uniqueName : undefined,
      default: c.default,
      // an autoincrementing id: SQLite's AUTOINCREMENT, or an INTEGER PRIMARY KEY alias of the rowid; PostgreSQL's identity
      generated:
        ("generatedIdentity" in c && c.generatedIdentity !== undefined) ||
        ("autoIncrement" in c && c.autoIncrement === true) ||
        (c.primary && c.columnType === "SQLiteInteger"),
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const indexes = config.indexes
    .map((i) => ({
      name: i.config.name,
      unique: i.config.unique,
      columns: i.config.columns.map((c) => ("name" in c ? c.name : "?")),
      where: whereText(i.config.where),
    }))
    .filter((i) => !pgOnlyIndexes.has(i.name ?? ""))
    .sort((a, b) => (a.name ?? "").localeCompare(b.name ?? ""));
  const foreignKeys = config.foreignKeys
    .map((f) => {
      const r = f.reference();
      return {
        columns: r.columns.map((c) => c.name),
        table: getTableName(r.foreignTable),
        foreignColumns: r.foreignColumns.map((c) => c.name),
        onDelete: f.onDelete,
      };
    })
    .sort((a, b) => a.columns.join().localeCompare(b.columns.join()));
  const primaryKeys = config.primaryKeys.map((p) => p.columns.map((c) => c.name));
  const uniqueConstraints = config.uniqueConstraints.map((u) => ({ name: u.name, columns: u.columns.map((c) => c.name) }));
  return { table, columns, indexes, foreignKeys, primaryKeys, uniqueConstraints };
}

describe("PostgreSQL schemas mirror the SQLite ones", () => {
  for (const [service, [lite, pgm]] of Object.entries(modules)) {
    it(`${service}: the same tables, columns, keys and indexes`, () => {
      const liteTables = tablesOf(lite).map((t) => shape(sqliteConfig(t as SQLiteTable)));
      const pgTables = tablesOf(pgm).map((t) => shape(pgConfig(t as PgTable)));
      const byName = (a: { table: string }, b: { table: string }) => a.table.localeCompare(b.table);
      expect(pgTables.sort(byName)).toEqual(liteTables.sort(byName));
      for (const t of tablesOf(pgm)) expect(pgConfig(t as PgTable).schema, getTableName(t)).toBe(service);
    });
  }
});

/** serverIt runs a test against the server: skipped, with the reason in the suite's name, when no URL is set. */
const serverIt = it.skipIf(!url);

describe(`PostgreSQL migrations against a server${url ? "" : " (skipped: SHAKER_TEST_DATABASE_URL is not set; CI sets it)"}`, () => {
  const name = `shaker_test_${randomBytes(6).toString("hex")}`;
  let admin: pg.Client;
  let pool: pg.Pool;

  beforeAll(async () => {
    if (!url) return;
    admin = new pg.Client({ connectionString: url });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    const target = new URL(url as string);
    target.pathname = `/${name}`;
    pool = new pg.Pool({ connectionString: target.toString(), max: 2 });
    // The DROP … WITH (FORCE) at the end can reach a connection the pool is still closing; the server's
    // goodbye (57P01) is then an error on the pool, which would otherwise end the test process.
    pool.on("error", () => {});
  }, 30_000);

  afterAll(async () => {
    await pool?.end();
    if (admin) {
      await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await admin.end();
    }
  }, 30_000);

  /** state is what the migrations leave: every table and index of the services' schemas, and the migration records. */
  async function state() {
    const objects = await pool.query(
      `SELECT schemaname || '.' || tablename AS name FROM pg_tables WHERE schemaname = ANY($1)
       UNION ALL SELECT schemaname || '.' || indexname FROM pg_indexes WHERE schemaname = ANY($1) ORDER BY 1`,
      [[...storedServices]],
    );
    const applied: Record<string, number> = {};
    for (const service of storedServices) {
      const r = await pool.query(`SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations_${service}`);
      applied[service] = r.rows[0].n;
    }
    return { objects: objects.rows.map((r) => r.name as string), applied };
  }

  serverIt(
    "applies every service's migrations into its own schema, and applying them again does nothing",
    async () => {
      for (const service of storedServices) await migrate(drizzle(pool), migrateOptions(service));
      const first = await state();
      for (const service of storedServices) {
        expect(first.applied[service], service).toBeGreaterThan(0);
        for (const t of tablesOf(modules[service][1])) expect(first.objects).toContain(`${service}.${getTableName(t)}`);
      }
      for (const service of storedServices) await migrate(drizzle(pool), migrateOptions(service));
      expect(await state()).toEqual(first);
    },
    60_000,
  );

  serverIt("registry: rows round-trip (booleans, jsonb, bigint timestamps) and keys hold", async () => {
    const db = drizzle(pool, { schema: registryPg });
    const now = 1_764_279_373_123; // past 2^31: a bigint read as a number
    const account = { id: "acc_1", name: "acme", admin: true, createdAt: now };
    await db.insert(registryPg.accounts).values(account);
    expect(await db.select().from(registryPg.accounts)).toEqual([account]);
    const key = { id: "key_1", accountId: "acc_1", prefix: "sk_", hash: "h1", createdAt: now, revokedAt: null };
    await db.insert(registryPg.apiKeys).values(key);
    expect(await db.select().from(registryPg.apiKeys)).toEqual([key]);
    const workflow = { id: "wf_1", accountId: "acc_1", refName: "hello", createdAt: now, updatedAt: now + 1, deletedAt: null };
    await db.insert(registryPg.workflows).values(workflow);
    expect(await db.select().from(registryPg.workflows)).toEqual([workflow]);
    // the partial unique index: a second live "hello" is refused, a deleted one is not
    await expect(db.insert(registryPg.workflows).values({ ...workflow, id: "wf_2" })).rejects.toThrow();
    await db.insert(registryPg.workflows).values({ ...workflow, id: "wf_3", deletedAt: now });
    const version = {
      id: "ver_1",
      workflowId: "wf_1",
      major: 1,
      minor: 2,
      patch: 3,
      workflowName: "Hello",
      description: "",
      script: "def execute(ctx): pass",
      inputSchema: { type: "object", properties: { n: { type: "integer" } }, required: ["n"] },
      outputSchema: null,
      env: { MODE: "test" },
      timeoutSeconds: 30,
      executionMode: 1,
      datastores: [{ name: "docs", write: false }],
      notes: "",
      published: false,
      createdAt: now,
    };
    await db.insert(registryPg.workflowVersions).values(version);
    expect(await db.select().from(registryPg.workflowVersions)).toEqual([version]);
    const accessory = { versionId: "ver_1", key: "readme", originalKey: "README", content: "{}" };
    await db.insert(registryPg.accessories).values(accessory);
    expect(await db.select().from(registryPg.accessories)).toEqual([accessory]);
    await expect(db.insert(registryPg.accessories).values(accessory)).rejects.toThrow();
    // foreign keys cascade as in SQLite
    await db.delete(registryPg.accounts);
    expect(await db.select().from(registryPg.accessories)).toEqual([]);
    expect(await db.select().from(registryPg.apiKeys)).toEqual([]);
  });

  serverIt("executor: rows round-trip (jsonb, bytea, bigint milliseconds, doubles)", async () => {
    const db = drizzle(pool, { schema: executorPg });
    const run = {
      id: "run_1",
      accountId: "acc_1",
      workflowRefName: "hello",
      version: "1.2.3",
      versionId: "ver_1",
      sessionId: "ses_1",
      status: 3,
      input: { n: 1, nested: { list: [1, "two", null, true] } },
      metadata: { team: "a" },
      output: "a string output",
      error: null,
      createdAt: 1_764_279_373_123,
      startedAt: 1_764_279_373_200,
      finishedAt: 1_764_279_374_000,
      emitted: [{ seq: 1, value: { x: 1.5 }, time: 1_764_279_373_300 }],
      logs: [{ level: 1, message: "hi", fields: { a: 1 }, time: 1_764_279_373_301, source: "stdout" }],
      httpCalls: [{ method: "GET", host: "example.com", status: 200, durationMs: 12.5, error: "", time: 1_764_279_373_302 }],
      warnings: ["w"],
      parentRunId: "",
      depth: 0,
      promptTokens: 10,
      completionTokens: 20,
      durationMs: 800.25,
      idempotencyKey: "user:k",
      requestHash: "rh",
      detached: 1,
      hasSecrets: 0,
      timeoutMs: 86_400_000 * 30, // past 2^31
      resume: { messages: [], params: { temperature: 0.5 }, hasInput: true },
      attempt: 2,
      attempts: [{ attempt: 1, startedAt: 1, endedAt: 2, interrupted: true }],
      unjournaledCalls: 0,
      executor: "ex-1",
    };
    await db.insert(executorPg.runs).values(run);
    expect(await db.select().from(executorPg.runs)).toEqual([run]);
    // the defaults are SQLite's
    await db.insert(executorPg.runs).values({ ...run, id: "run_2", parentRunId: undefined, attempt: undefined, detached: undefined });
    const [second] = await db.select().from(executorPg.runs).where(sql`id = 'run_2'`);
    expect([second.parentRunId, second.attempt, second.detached]).toEqual(["", 1, 0]);
    const call = {
      runId: "run_1",
      seq: 1,
      method: "shaker.v1.ModelProxy/Chat",
      requestHash: "abc",
      journaled: 1,
      messages: Buffer.from([0, 0, 0, 2, 0x7b, 0x7d, 0xff, 0x00]),
      error: { code: 5, message: "not found" },
      createdAt: 1_764_279_373_400,
    };
    await db.insert(executorPg.runCalls).values([call, { ...call, seq: 2, messages: null, error: null }]);
    const calls = await db.select().from(executorPg.runCalls).orderBy(executorPg.runCalls.seq);
    expect(calls[0]).toEqual(call);
    expect(Buffer.isBuffer(calls[0].messages)).toBe(true);
    expect(calls[1].messages).toBeNull();
    await expect(db.insert(executorPg.runCalls).values(call)).rejects.toThrow();
  });

  serverIt("modelproxy: rows round-trip (jsonb, doubles)", async () => {
    const db = drizzle(pool, { schema: modelproxyPg });
    const call = {
      id: "call_1",
      accountId: "acc_1",
      sessionId: "ses_1",
      runId: "run_1",
      workflowRefName: "hello",
      intent: "chat",
      application: "app",
      kind: "chat",
      model: "m",
      provider: "p",
      attempts: 2,
      attemptLog: [
        { model: "m", provider: "p", status: 500, error: "boom", durationMs: 1.25 },
        { model: "m", provider: "p", status: 200, error: "", durationMs: 3.5 },
      ],
      status: "ok",
      error: "",
      latencyMs: 4.75,
      ttftMs: 0.125,
      promptTokens: 3,
      completionTokens: 4,
      request: { messages: [{ role: "user", content: "hi" }] },
      response: null,
      createdAt: 1_764_279_373_123.456,
    };
    await db.insert(modelproxyPg.calls).values(call);
    expect(await db.select().from(modelproxyPg.calls)).toEqual([call]);
  });

  serverIt("datastore: rows round-trip (float32 vectors as real[], bytea) and the generated tsvector matches", async () => {
    const db = drizzle(pool, { schema: datastorePg });
    const [store] = await db
      .insert(datastorePg.stores)
      .values({ accountId: "acc_1", name: "docs", createdAt: 1_764_279_373_123 })
      .returning();
    expect(store).toEqual({ id: 1, accountId: "acc_1", name: "docs", embeddingModel: "", dimension: 0, createdAt: 1_764_279_373_123 });
    const floats = new Float32Array([0.1, -0, 1 / 3, 3.4e38, 1e-45, -2.5, Number.NaN, Number.POSITIVE_INFINITY]);
    const vector = Buffer.from(floats.buffer);
    const record = {
      storeId: store.id,
      recordId: "r1",
      text: "The quick brown Fox",
      metadata: '{"lang":"en","n":2}',
      vector,
      vectorBytes: vector,
    };
    const [inserted] = await db.insert(datastorePg.records).values(record).returning();
    expect(inserted.rowid).toBe(1);
    const empty = Buffer.alloc(0);
    await db.insert(datastorePg.records).values({ ...record, recordId: "r2", text: "lazy dogs", vector: empty, vectorBytes: empty });
    const rows = await db.select().from(datastorePg.records).orderBy(datastorePg.records.rowid);
    expect(rows.map(({ search, ...r }) => r)).toEqual([
      { rowid: 1, ...record },
      { rowid: 2, ...record, recordId: "r2", text: "lazy dogs", vector: empty, vectorBytes: empty },
    ]);
    expect(rows[0].vector.equals(vector)).toBe(true); // bit for bit, NaN and -0 included
    expect(rows[0].search).toBe("'brown':3 'fox':4 'quick':2 'the':1");
    // the GIN-indexed tsvector answers keyword queries ('simple': lower-cased words, no stemming)
    const match = (q: string) =>
      db
        .select({ id: datastorePg.records.recordId })
        .from(datastorePg.records)
        .where(sql`${datastorePg.records.search} @@ to_tsquery('simple', ${q})`)
        .orderBy(datastorePg.records.rowid);
    expect(await match("fox")).toEqual([{ id: "r1" }]);
    expect(await match("fox | dogs")).toEqual([{ id: "r1" }, { id: "r2" }]);
    expect(await match("dog")).toEqual([]);
    // the array is a real[] PostgreSQL computes with: the exact-scan fallback needs nothing more
    const [{ dims }] = (await db.execute(sql`SELECT array_length(vector, 1) AS dims FROM datastore.records WHERE record_id = 'r1'`))
      .rows as { dims: number }[];
    expect(dims).toBe(floats.length);
    await expect(db.insert(datastorePg.records).values(record)).rejects.toThrow();
    const staged = { uploadId: "up_1", recordId: "r3", text: "t", metadata: "{}", vector: Buffer.from([1, 2, 3, 255]) };
    await db.insert(datastorePg.stagedRecords).values(staged);
    expect(await db.select().from(datastorePg.stagedRecords)).toEqual([{ seq: 1, ...staged }]);
    // deleting the store deletes its records (the store will also drop its pgvector index, if any)
    await db.delete(datastorePg.stores);
    expect(await db.select().from(datastorePg.records)).toEqual([]);
  });

  serverIt("datastore: records written before vector_bytes get theirs, bit for bit, from their real[]", async () => {
    // A database of its own, migrated as the first release left it (0000 only), then given records.
    const old = `${name}_old`;
    await admin.query(`CREATE DATABASE ${old}`);
    const target = new URL(url as string);
    target.pathname = `/${old}`;
    const oldPool = new pg.Pool({ connectionString: target.toString(), max: 1 });
    oldPool.on("error", () => {});
    const folder = mkdtempSync(join(tmpdir(), "shaker-migrations-"));
    try {
      const options = migrateOptions("datastore");
      cpSync(options.migrationsFolder, folder, { recursive: true });
      const journalFile = join(folder, "meta", "_journal.json");
      const journal = JSON.parse(readFileSync(journalFile, "utf8"));
      expect(journal.entries[0].tag).toBe("0000_round_lilith");
      writeFileSync(journalFile, JSON.stringify({ ...journal, entries: journal.entries.slice(0, 1) }));
      await migrate(drizzle(oldPool), { ...options, migrationsFolder: folder });
      await oldPool.query("INSERT INTO datastore.stores (account_id, name, created_at) VALUES ('acc_1', 'docs', 0)");
      const floats = [0.1, -0, 1 / 3, 3.4e38, 1e-45, -2.5, Number.NaN, Number.NEGATIVE_INFINITY];
      const vectors = [floats, [], [1, 2, 3]];
      for (const [i, v] of vectors.entries()) {
        const literal = `{${v.map((x) => (Object.is(x, -0) ? "-0" : String(x))).join(",")}}`;
        await oldPool.query(
          "INSERT INTO datastore.records (store_id, record_id, text, metadata, vector) VALUES (1, $1, 't', '{}', $2::real[])",
          [`r${i}`, literal],
        );
      }
      await migrate(drizzle(oldPool), options);
      const { rows } = await oldPool.query("SELECT record_id, vector_bytes FROM datastore.records ORDER BY rowid");
      expect(rows.map((r) => r.record_id)).toEqual(["r0", "r1", "r2"]);
      for (const [i, v] of vectors.entries())
        expect((rows[i].vector_bytes as Buffer).equals(Buffer.from(new Float32Array(v).buffer)), `r${i}`).toBe(true);
      const { rows: columns } = await oldPool.query(
        "SELECT is_nullable FROM information_schema.columns WHERE table_schema = 'datastore' AND table_name = 'records' AND column_name = 'vector_bytes'",
      );
      expect(columns).toEqual([{ is_nullable: "NO" }]);
    } finally {
      rmSync(folder, { recursive: true, force: true });
      await oldPool.end();
      await admin.query(`DROP DATABASE IF EXISTS ${old} WITH (FORCE)`);
    }
  });
});
