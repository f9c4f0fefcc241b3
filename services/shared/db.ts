import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { type BetterSQLite3Database, drizzle } from "drizzle-orm/better-sqlite3";
import { migrate } from "drizzle-orm/better-sqlite3/migrator";
import { backstopPages, unwatch, watch } from "./checkpointer.js";

/** Options of openDatabase. */
export interface OpenDatabaseOptions<S extends Record<string, unknown>> {
  /** file is the SQLite file, or ":memory:" for tests. */
  file: string;
  /** migrationsFolder holds the committed drizzle-kit migrations, applied at open. */
  migrationsFolder: string;
  /** schema is the service's drizzle schema. */
  schema: S;
  /** setup runs on the raw connection before migrations (to load extensions). */
  setup?: (sqlite: Database.Database) => void;
}

/** Db is an open service database: the drizzle handle and the connection under it. */
export interface Db<S extends Record<string, unknown>> {
  orm: BetterSQLite3Database<S>;
  sqlite: Database.Database;
  close(): void;
}

/**
 * openDatabase opens (creating if needed) one service's SQLite file with WAL,
 * synchronous=NORMAL (a crash loses no committed transaction in WAL mode; only a power cut can
 * lose the last ones) and foreign keys on, then applies the service's migrations. Its WAL is
 * checkpointed from the checkpointer's thread, not on the event loop (see checkpointer.ts).
 */
export function openDatabase<S extends Record<string, unknown>>(options: OpenDatabaseOptions<S>): Db<S> {
  if (options.file !== ":memory:") mkdirSync(dirname(options.file), { recursive: true });
  const sqlite = new Database(options.file);
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("synchronous = NORMAL");
  sqlite.pragma("foreign_keys = ON");
  sqlite.pragma("busy_timeout = 5000");
  options.setup?.(sqlite);
  const orm = drizzle(sqlite, { schema: options.schema });
  migrate(orm, { migrationsFolder: options.migrationsFolder });
  if (options.file === ":memory:") return { orm, sqlite, close: () => sqlite.close() };
  sqlite.pragma(`wal_autocheckpoint = ${backstopPages}`);
  watch(options.file);
  return {
    orm,
    sqlite,
    close() {
      unwatch(options.file);
      sqlite.close();
    },
  };
}
