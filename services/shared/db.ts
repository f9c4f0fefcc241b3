import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import Database from "better-sqlite3";
import type { SQL } from "drizzle-orm";
import { drizzle as drizzleSqlite } from "drizzle-orm/better-sqlite3";
import { migrate as migrateSqlite } from "drizzle-orm/better-sqlite3/migrator";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { migrate as migratePg } from "drizzle-orm/node-postgres/migrator";
import type { BaseSQLiteDatabase } from "drizzle-orm/sqlite-core";
import pg from "pg";
import { backstopPages, unwatch, watch } from "./checkpointer.js";
import { type Dialect, isPostgresUrl, migrationsDir, type StoredService } from "./dialects.js";

export * from "./dialects.js";

// Every service keeps its tables in one of two databases: a SQLite file of its own under the data
// directory (the embedded default), or PostgreSQL (SHAKER_DATABASE_URL), where each service's
// tables are in a PostgreSQL schema named after it, so all four share one database.
//
// A store is written once for both. Its queries are drizzle's, built on `db.orm` from `db.tables`
// (the dialect's tables; their rows have the same TypeScript shape, see schema-parity.ts) and
// always awaited: `await orm.select()…` gives rows on either database. SQLite's synchronous
// `.get()`, `.all()` and `.run()` do not exist on PostgreSQL's builders; nor does `rowid`.
// Transactions go through `db.transaction`, raw SQL through `db.rows`/`db.run`.

const repository = new URL("../../", import.meta.url).pathname;

/**
 * pgMigrateOptions are drizzle's migrator options for a service on PostgreSQL. Its record of applied
 * migrations is a table of its own, `drizzle.__drizzle_migrations_<service>`: the migrator decides what
 * to apply from its table's latest entry, so the services' histories must not share one. (It is not
 * in the service's schema: the migrator creates its schema before the first migration, whose
 * `CREATE SCHEMA` would then fail.)
 */
export function pgMigrateOptions(service: StoredService) {
  return {
    migrationsFolder: join(repository, migrationsDir(service, "postgresql")),
    migrationsSchema: "drizzle",
    migrationsTable: `__drizzle_migrations_${service}`,
  };
}

/** Orm is drizzle on either database, typed as SQLite's asynchronous flavour: await every query. */
export type Orm<S extends Record<string, unknown>> = BaseSQLiteDatabase<"async", unknown, S>;

/** Options of openServiceDatabase. */
export interface ServiceDatabaseOptions<S extends Record<string, unknown>> {
  service: StoredService;
  /** location is a postgres:// URL, or a SQLite file (":memory:" for tests). */
  location: string;
  /** schema is the service's SQLite tables (schema.ts). */
  schema: S;
  /** pgSchema is the service's PostgreSQL tables (schema.pg.ts): the same names, rows of the same shape. */
  pgSchema: Record<string, unknown>;
  /** poolSize bounds the PostgreSQL connections of this store; default 8. */
  poolSize?: number;
  /** setup runs on a SQLite connection before migrations (to load extensions). */
  setup?: (sqlite: Database.Database) => void;
}

/** ServiceDatabase is one service's open database, on either dialect. */
export interface ServiceDatabase<S extends Record<string, unknown>> {
  dialect: Dialect;
  /** orm runs the store's queries (see above: always awaited). */
  orm: Orm<S>;
  /** tables are the dialect's tables, typed as SQLite's. */
  tables: S;
  /** sqlite is the SQLite connection (undefined on PostgreSQL): for SQLite-only statements. */
  sqlite: Database.Database | undefined;
  /** pool is the PostgreSQL pool (undefined on SQLite). */
  pool: pg.Pool | undefined;
  /**
   * transaction runs fn in one transaction: all of it or none. On SQLite transactions run one at a
   * time; a statement another caller makes meanwhile, outside any transaction, joins it (on one
   * connection there is no keeping it out), so transactions must not wait on anything but their
   * own queries.
   */
  transaction<T>(fn: (tx: Orm<S>) => Promise<T>): Promise<T>;
  /** rows runs raw SQL and returns its rows, as the driver reads them (no column mapping). */
  rows<T = Record<string, unknown>>(query: SQL): Promise<T[]>;
  /** run runs raw SQL for its effect; it answers how many rows it changed. */
  run(query: SQL): Promise<number>;
  close(): Promise<void>;
}

/**
 * openServiceDatabase opens one service's database and applies its committed migrations.
 *
 * A SQLite file (created if needed) gets WAL, synchronous=NORMAL (a crash loses no committed
 * transaction in WAL mode; only a power cut can lose the last ones), foreign keys and a busy
 * timeout; its WAL is checkpointed from the checkpointer's thread, not on the event loop (see
 * checkpointer.ts).
 *
 * On PostgreSQL, migrations run under an advisory lock, so processes starting together against
 * one database apply each migration once.
 */
export async function openServiceDatabase<S extends Record<string, unknown>>(
  options: ServiceDatabaseOptions<S>,
): Promise<ServiceDatabase<S>> {
  return isPostgresUrl(options.location) ? openPostgres(options) : openSqlite(options);
}

/**
 * sqliteConnection opens a connection to a service's SQLite file as every connection to it is set:
 * WAL, synchronous NORMAL, foreign keys, a 5 s busy timeout, and on a file the checkpoint backstop.
 * Another thread's connection (a writer thread) opens the file with it once the service has.
 */
export function sqliteConnection(file: string): Database.Database {
  if (file !== ":memory:") mkdirSync(dirname(file), { recursive: true });
  const sqlite = new Database(file);
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("synchronous = NORMAL");
  sqlite.pragma("foreign_keys = ON");
  sqlite.pragma("busy_timeout = 5000");
  if (file !== ":memory:") sqlite.pragma(`wal_autocheckpoint = ${backstopPages}`);
  return sqlite;
}

/** preparedStatements bounds the statements preparedOnce keeps per connection (the least recently used go). */
const preparedStatements = 500;

/**
 * preparedOnce is the connection as drizzle is given it: a statement is compiled once per SQL text
 * and kept, not compiled again for every query (drizzle prepares each query it runs, and compiling
 * took most of a simple query's time: 0.13 ms of a registry lookup's ~0.3). A kept statement is handed
 * out again in drizzle's default (object rows) mode; one still being iterated is not reused.
 */
function preparedOnce(sqlite: Database.Database): Database.Database {
  const kept = new Map<string, Database.Statement>();
  const prepare = (source: string): Database.Statement => {
    const stmt = kept.get(source);
    if (stmt && !stmt.busy) {
      kept.delete(source);
      kept.set(source, stmt);
      if (stmt.reader) stmt.raw(false);
      return stmt;
    }
    const fresh = sqlite.prepare(source);
    if (stmt) return fresh;
    kept.set(source, fresh);
    if (kept.size > preparedStatements) kept.delete(kept.keys().next().value as string);
    return fresh;
  };
  return new Proxy(sqlite, {
    get(target, property) {
      if (property === "prepare") return prepare;
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

function openSqlite<S extends Record<string, unknown>>(options: ServiceDatabaseOptions<S>): ServiceDatabase<S> {
  const file = options.location;
  const sqlite = sqliteConnection(file);
  options.setup?.(sqlite);
  const orm = drizzleSqlite(preparedOnce(sqlite), { schema: options.schema });
  migrateSqlite(orm, { migrationsFolder: join(repository, migrationsDir(options.service, "sqlite")) });
  if (file !== ":memory:") watch(file);
  let queue: Promise<unknown> = Promise.resolve();
  return {
    dialect: "sqlite",
    orm: orm as unknown as Orm<S>,
    tables: options.schema,
    sqlite,
    pool: undefined,
    transaction<T>(fn: (tx: Orm<S>) => Promise<T>): Promise<T> {
      const done = queue.then(async () => {
        sqlite.exec("BEGIN IMMEDIATE");
        try {
          const result = await fn(orm as unknown as Orm<S>);
          sqlite.exec("COMMIT");
          return result;
        } catch (e) {
          if (sqlite.inTransaction) sqlite.exec("ROLLBACK");
          throw e;
        }
      });
      queue = done.catch(() => undefined);
      return done;
    },
    async rows<T>(query: SQL): Promise<T[]> {
      return orm.all<T>(query);
    },
    async run(query: SQL): Promise<number> {
      return orm.run(query).changes;
    },
    async close() {
      if (file !== ":memory:") unwatch(file);
      sqlite.close();
    },
  };
}

async function openPostgres<S extends Record<string, unknown>>(options: ServiceDatabaseOptions<S>): Promise<ServiceDatabase<S>> {
  const pool = new pg.Pool({ connectionString: options.location, max: options.poolSize ?? 8, idleTimeoutMillis: 10_000 });
  // An idle connection the server drops (a restart, a network cut) is an error on the pool: the
  // pool replaces it; left unhandled it would end the process.
  pool.on("error", () => {});
  const orm = drizzlePg({ client: pool, schema: options.pgSchema });
  const client = await pool.connect().catch((e: Error) => {
    void pool.end();
    throw new Error(`cannot reach PostgreSQL for the ${options.service}: ${e.message}`);
  });
  try {
    await client.query("SELECT pg_advisory_lock(hashtext('shaker migrations'))");
    try {
      await migratePg(drizzlePg({ client }), pgMigrateOptions(options.service));
    } finally {
      await client.query("SELECT pg_advisory_unlock(hashtext('shaker migrations'))");
    }
  } catch (e) {
    client.release();
    await pool.end();
    throw e;
  }
  client.release();
  return {
    dialect: "postgresql",
    orm: orm as unknown as Orm<S>,
    tables: options.pgSchema as S,
    sqlite: undefined,
    pool,
    transaction<T>(fn: (tx: Orm<S>) => Promise<T>): Promise<T> {
      return orm.transaction((tx) => fn(tx as unknown as Orm<S>));
    },
    async rows<T>(query: SQL): Promise<T[]> {
      return (await orm.execute(query)).rows as T[];
    },
    async run(query: SQL): Promise<number> {
      return (await orm.execute(query)).rowCount ?? 0;
    },
    async close() {
      await pool.end();
    },
  };
}
