import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import type net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Shaker, startShaker } from "../cli/serve.js";
import { type Config, loadConfig } from "../services/shared/config.js";
import { freshDatabase, testDialect } from "./databases.js";

/** TestServer is a real Shaker on a free port with a fresh data directory. */
export interface TestServer {
  shaker: Shaker;
  url: string;
  apiKey: string;
  dataDir: string;
  config: Config;
  /** request calls a REST route with the default key; returns status and parsed JSON. */
  request(
    method: string,
    path: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<{ status: number; body: any; headers: Headers }>;
  /** upload stores a workflow and fails the test when the upload is refused. */
  upload(ref: string, script: string, extra?: Record<string, unknown>): Promise<any>;
  /** invoke calls POST /v1/chat/completions. */
  invoke(body: Record<string, unknown>, headers?: Record<string, string>): Promise<{ status: number; body: any; headers: Headers }>;
  close(): Promise<void>;
}

/** startTestServer starts Shaker on port 0 with its own data directory (removed on close). */
export async function startTestServer(overrides: Partial<Config> = {}, env: NodeJS.ProcessEnv = {}): Promise<TestServer> {
  const dataDir = overrides.dataDir ?? mkdtempSync(join(tmpdir(), "shaker-test-"));
  const apiKey = overrides.apiKey ?? "sk-shaker-test-default-key";
  // Under SHAKER_TEST_DIALECT=postgresql every server gets an empty database of its own.
  const database = testDialect === "postgresql" && !overrides.databaseUrl && !env.SHAKER_DATABASE_URL ? await freshDatabase() : undefined;
  // Tests share files with their workflows through the host's /tmp, so they run unconfined unless
  // they ask; test/sandbox.test.ts and the reliability suite exercise the confinement itself.
  // A caller that disconnects cancels its run after 0.2 s, not the 5 s a real client may need to come back.
  const config = loadConfig(env, {
    port: 0,
    dataDir,
    apiKey,
    quiet: true,
    workers: 1,
    sandbox: "none",
    disconnectGraceMs: 200,
    ...(database ? { databaseUrl: database.url, databasePoolSize: 3 } : {}),
    ...overrides,
  });
  const shaker = await startShaker(config).catch(async (e) => {
    await database?.drop();
    throw e;
  });
  const url = shaker.url;
  async function request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json", ...headers },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body: parsed as any, headers: res.headers };
  }
  return {
    shaker,
    url,
    apiKey,
    dataDir,
    config,
    request,
    async upload(ref, script, extra = {}) {
      const res = await request("POST", "/v1/workflows/upload", { workflow_ref_name: ref, script, ...extra });
      if (res.status !== 201) throw new Error(`upload of ${ref} failed: ${res.status} ${JSON.stringify(res.body)}`);
      return res.body.data;
    },
    invoke: (body, headers) => request("POST", "/v1/chat/completions", body, headers),
    async close() {
      await shaker.close();
      await database?.drop();
      if (!overrides.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** waitFor polls a condition every 50 ms and fails the test after `ms` with what it waited for. */
export async function waitFor(check: () => boolean | Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** parentPids maps every process of the machine to its parent's pid, as /proc shows them now. */
export function parentPids(): Map<number, number> {
  const parent = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      parent.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // gone meanwhile
    }
  }
  return parent;
}

/** childrenOf lists the living (not zombie) children of a process. */
export function childrenOf(pid: number): number[] {
  return [...parentPids()].filter(([child, ppid]) => ppid === pid && alive(child)).map(([child]) => child);
}

/** alive tells whether a process exists and is not a zombie (a zombie is dead for our purposes). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
}

/** socketClosed resolves true when the socket closes, false if it is still open after `hangMs` (a hang). */
export function socketClosed(socket: net.Socket, hangMs = 10_000): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), hangMs);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * trueTop is the ids of the k records whose vectors are most similar to the query by cosine, computed
 * plainly here (a zero vector has no score and is left out): what an exact vector search must answer.
 */
export function trueTop(records: { id: string; vector: Float32Array }[], query: Float32Array, k: number): string[] {
  const cosine = (v: Float32Array) => {
    let dot = 0;
    let vv = 0;
    let qq = 0;
    for (let i = 0; i < query.length; i++) {
      dot += v[i] * query[i];
      vv += v[i] * v[i];
      qq += query[i] * query[i];
    }
    return dot / Math.sqrt(vv * qq);
  };
  return records
    .map((r) => ({ id: r.id, score: cosine(r.vector) }))
    .filter((r) => Number.isFinite(r.score))
    .sort((a, b) => b.score - a.score)
    .slice(0, k)
    .map((r) => r.id);
}
