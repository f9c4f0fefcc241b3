import { randomBytes } from "node:crypto";
import pg from "pg";
import type { Dialect } from "../services/shared/dialects.js";

// Which database the store and end-to-end tests run on. `npm test` runs them on SQLite, and runs
// the files of vitest.config.ts's "postgresql" project again with SHAKER_TEST_DIALECT=postgresql
// when SHAKER_TEST_DATABASE_URL names a PostgreSQL server: each test server or store then gets a
// database of its own there, created empty and dropped when it closes.

/** testDatabaseUrl is the PostgreSQL server the tests may use (SHAKER_TEST_DATABASE_URL), if any. */
export const testDatabaseUrl = process.env.SHAKER_TEST_DATABASE_URL || undefined;

/** testDialect is the database this test process runs its stores on. */
export const testDialect: Dialect = process.env.SHAKER_TEST_DIALECT === "postgresql" ? "postgresql" : "sqlite";

if (testDialect === "postgresql" && !testDatabaseUrl) {
  throw new Error("SHAKER_TEST_DIALECT=postgresql needs SHAKER_TEST_DATABASE_URL");
}

/** FreshDatabase is an empty PostgreSQL database of one test. */
export interface FreshDatabase {
  url: string;
  drop(): Promise<void>;
}

/** freshDatabase creates an empty database on the test server (SHAKER_TEST_DATABASE_URL). */
export async function freshDatabase(): Promise<FreshDatabase> {
  if (!testDatabaseUrl) throw new Error("freshDatabase needs SHAKER_TEST_DATABASE_URL");
  return createDatabase(testDatabaseUrl, "shaker_test");
}

/**
 * createDatabase creates an empty database named `<prefix>_<random>` on the server at `serverUrl`
 * (tests and benches alike); it throws when the server cannot be reached.
 */
export async function createDatabase(serverUrl: string, prefix: string): Promise<FreshDatabase> {
  const admin = async (statement: string) => {
    const client = new pg.Client({ connectionString: serverUrl, connectionTimeoutMillis: 5000 });
    await client.connect();
    try {
      await client.query(statement);
    } finally {
      await client.end();
    }
  };
  const name = `${prefix}_${randomBytes(6).toString("hex")}`;
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    // WITH (FORCE) ends connections a failed test left open.
    drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
  };
}

/**
 * testStoreLocation is where a store under test keeps its tables: ":memory:" SQLite, or a fresh
 * PostgreSQL database under SHAKER_TEST_DIALECT=postgresql. Call release when the store is closed.
 */
export async function testStoreLocation(): Promise<{ location: string; release(): Promise<void> }> {
  if (testDialect === "sqlite") return { location: ":memory:", release: async () => {} };
  const db = await freshDatabase();
  return { location: db.url, release: db.drop };
}
