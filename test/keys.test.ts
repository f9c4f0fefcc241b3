import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CliResult as Result, runMain } from "./cli-process.js";
import { type FreshDatabase, freshDatabase, testDialect } from "./databases.js";
import { startTestServer, type TestServer } from "./helpers.js";

/** shaker runs `shaker ARGS` in this process (cli/main.ts's main), with SHAKER_URL and SHAKER_API_KEY unset unless given. */
const shaker = (args: string[], env: Record<string, string>): Promise<Result> => runMain(args, env);

const keyPattern = /sk-shaker-[A-Za-z0-9_-]{32}/;

/** expectCleanError checks a failure is one clear line, without a stack trace. */
function expectCleanError(r: Result, exitCode: number, message: RegExp): void {
  expect(r.code, r.stderr).toBe(exitCode);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  expect(r.stdout).toBe("");
}

/** storedText is everything the Registry's key table holds, as text: the SQLite files' bytes, or the PostgreSQL rows. */
async function storedText(dataDir: string, databaseUrl: string | undefined): Promise<string> {
  if (databaseUrl) {
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      return JSON.stringify((await client.query("SELECT * FROM registry.api_keys")).rows);
    } finally {
      await client.end();
    }
  }
  const files = ["registry.db", "registry.db-wal"].map((f) => join(dataDir, f)).filter((f) => existsSync(f));
  return files.map((f) => readFileSync(f).toString("latin1")).join("");
}

describe("shaker keys on the server's database, without a server", () => {
  let dataDir: string;
  let database: FreshDatabase | undefined;
  let env: Record<string, string>;
  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "shaker-keys-"));
    // On PostgreSQL the keys are in SHAKER_DATABASE_URL's database, not the data directory.
    database = testDialect === "postgresql" ? await freshDatabase() : undefined;
    env = { SHAKER_DATA_DIR: dataDir, ...(database ? { SHAKER_DATABASE_URL: database.url } : {}) };
  });
  afterAll(async () => {
    rmSync(dataDir, { recursive: true, force: true });
    await database?.drop();
  });

  it("creates, lists and revokes keys; stores only their hash", async () => {
    const created = await shaker(["keys", "create", "--account", "acme"], env);
    expect(created.code, created.stderr).toBe(0);
    const key = keyPattern.exec(created.stdout)![0];
    expect(created.stdout).toMatch(/Created key key_\S+ for account 'acme'\. It is shown only this once/);
    const second = await shaker(["keys", "create", "--account", "acme", "--json"], env);
    const secondJson = JSON.parse(second.stdout);
    expect(secondJson).toMatchObject({ account: "acme", revoked_at: null, api_key: expect.stringMatching(keyPattern) });

    const listed = JSON.parse((await shaker(["keys", "list", "--json"], env)).stdout);
    expect(listed).toHaveLength(2);
    expect(listed.every((k: any) => k.account === "acme" && !("api_key" in k))).toBe(true);
    const table = await shaker(["keys", "list", "--account", "acme"], env);
    expect(table.stdout.split("\n")[0]).toMatch(/^ID\s+PREFIX\s+ACCOUNT\s+CREATED\s+STATUS$/);
    expect(table.stdout).not.toContain(key);

    const revoked = await shaker(["keys", "revoke", secondJson.id], env);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(revoked.stdout).toMatch(new RegExp(`Revoked key ${secondJson.id} \\(sk-shaker-.{4}…\\) of account 'acme'`));
    const after = JSON.parse((await shaker(["keys", "list", "--account", "acme", "--json"], env)).stdout);
    expect(after.find((k: any) => k.id === secondJson.id).revoked_at).toMatch(/^\d{4}-/);
    expect(after.find((k: any) => k.id !== secondJson.id).revoked_at).toBeNull();

    const stored = await storedText(dataDir, database?.url);
    expect(stored).toContain(key.slice(0, 14));
    expect(stored).not.toContain(key);
    expect(stored).not.toContain(secondJson.api_key);
  }, 120_000);

  it("fails with one clear line and a non-zero exit", async () => {
    expectCleanError(await shaker(["keys", "create"], env), 2, /^shaker keys: keys create needs --account NAME\n/);
    expectCleanError(await shaker(["keys", "create", "--account"], env), 2, /--account needs a NAME/);
    expectCleanError(await shaker(["keys", "list", "--bogus"], env), 2, /unknown option '--bogus'/);
    expectCleanError(await shaker(["keys", "revoke"], env), 2, /keys revoke needs exactly one key ID/);
    expectCleanError(await shaker(["keys", "rotate"], env), 2, /unknown keys command 'rotate'/);
    expectCleanError(await shaker(["keys", "create", "--account", "Not Valid"], env), 1, /^shaker: account name 'Not Valid' must match/);
    expectCleanError(
      await shaker(["keys", "create", "--account", "acme", "--admin"], env),
      1,
      /^shaker: account 'acme' already exists and is not an admin account/,
    );
    expectCleanError(await shaker(["keys", "revoke", "key_nope"], env), 1, /^shaker: API key 'key_nope' not found\n$/);
    expectCleanError(await shaker(["keys", "list", "--account", "ghost"], env), 1, /^shaker: account 'ghost' not found\n$/);
    const missing = join(dataDir, "does-not-exist");
    expectCleanError(await shaker(["keys", "list"], { SHAKER_DATA_DIR: missing }), 1, /no Shaker data in .*does-not-exist/);
    expect(existsSync(missing)).toBe(false);
    expectCleanError(
      await shaker(["keys", "list"], { SHAKER_DATA_DIR: missing, SHAKER_DATABASE_URL: "postgres://postgres@127.0.0.1:1/none" }),
      1,
      /^shaker: cannot reach PostgreSQL for the registry: .*ECONNREFUSED/,
    );
    expect(existsSync(missing)).toBe(false);
  }, 120_000);
});

describe("shaker keys with a running server", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server.close());

  it("works on the server's database while it runs: new keys work at once, revoked ones fail", async () => {
    const env = {
      SHAKER_DATA_DIR: server.dataDir,
      ...(server.config.databaseUrl ? { SHAKER_DATABASE_URL: server.config.databaseUrl } : {}),
    };
    const created = await shaker(["keys", "create", "--account", "local-acct", "--json"], env);
    expect(created.code, created.stderr).toBe(0);
    const { api_key: key, id } = JSON.parse(created.stdout);
    const auth = { authorization: `Bearer ${key}` };
    expect((await server.request("GET", "/v1/workflows", undefined, auth)).status).toBe(200);
    expect((await shaker(["keys", "revoke", id], env)).code).toBe(0);
    expect((await server.request("GET", "/v1/workflows", undefined, auth)).status).toBe(401);
  }, 120_000);

  it("goes to SHAKER_URL with an admin SHAKER_API_KEY", async () => {
    const remote = { SHAKER_URL: server.url, SHAKER_API_KEY: server.apiKey, SHAKER_DATA_DIR: "/nonexistent" };
    const created = await shaker(["keys", "create", "--account", "remote-acct"], remote);
    expect(created.code, created.stderr).toBe(0);
    const key = keyPattern.exec(created.stdout)![0];
    expect((await server.request("GET", "/v1/workflows", undefined, { authorization: `Bearer ${key}` })).status).toBe(200);

    const listed = JSON.parse((await shaker(["keys", "list", "--json"], remote)).stdout);
    expect(new Set(listed.map((k: any) => k.account))).toEqual(new Set(["default", "local-acct", "remote-acct"]));
    const mine = listed.find((k: any) => k.account === "remote-acct");
    const revoked = await shaker(["keys", "revoke", mine.id], remote);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect((await server.request("GET", "/v1/workflows", undefined, { authorization: `Bearer ${key}` })).status).toBe(401);

    // A non-admin account's key may not create keys; a wrong key and a missing key are refused clearly.
    const other = keyPattern.exec((await shaker(["keys", "create", "--account", "plain"], remote)).stdout)![0];
    expectCleanError(
      await shaker(["keys", "create", "--account", "plain"], { ...remote, SHAKER_API_KEY: other }),
      1,
      /only an admin account's key may manage other accounts' keys \(SHAKER_API_KEY must belong to an admin account\)/,
    );
    // An account created with --admin manages keys like the default one.
    const ops = keyPattern.exec((await shaker(["keys", "create", "--account", "ops", "--admin"], remote)).stdout)![0];
    const plainKeys = await shaker(["keys", "list", "--account", "plain", "--json"], { ...remote, SHAKER_API_KEY: ops });
    expect(plainKeys.code, plainKeys.stderr).toBe(0);
    expect(JSON.parse(plainKeys.stdout).map((k: any) => k.account)).toEqual(["plain"]);
    expectCleanError(
      await shaker(["keys", "list"], { ...remote, SHAKER_API_KEY: "sk-wrong" }),
      1,
      /refused SHAKER_API_KEY: invalid API key/,
    );
    expectCleanError(await shaker(["keys", "list"], { ...remote, SHAKER_API_KEY: "" }), 1, /SHAKER_URL is set but SHAKER_API_KEY is not/);
    expectCleanError(await shaker(["keys", "list"], { ...remote, SHAKER_URL: "not a url" }), 1, /SHAKER_URL is not a URL/);
  }, 120_000);
});
