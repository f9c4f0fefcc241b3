// Several executors on one PostgreSQL database, each a process of its own, beside a process for the
// registry, the ModelProxy and the datastores and one edge. 200 runs (sync ones from the real openai
// client, with its own retries, and async ones) spread over both executors; one executor is
// SIGKILLed mid-burst. Every run ends (succeeded, resumed by the other executor, or failed with
// ExecutorLost), none stays running, and new runs still succeed.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FreshDatabase, freshDatabase, testDatabaseUrl } from "../databases.js";
import { type FakeUpstream, startFakeUpstream, writeFakeModelsConfig } from "../fake-upstream.js";
import { waitFor } from "../helpers.js";
import { freePort, type ServerProcess, startServerProcess, stopServerProcess } from "./process.js";

const key = "sk-shaker-cluster-test";
const secret = "cluster-test-service-secret-0123456789";

// A model call, a second of work, a second model call: a run killed in the middle has a journal.
const workflow = `
import time

def execute(ctx):
    first = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "one " + str(ctx.input["i"])}])
    time.sleep(1)
    second = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "two " + str(ctx.input["i"])}])
    return {"i": ctx.input["i"], "said": [first["choices"][0]["message"]["content"], second["choices"][0]["message"]["content"]]}
`;

describe.skipIf(!testDatabaseUrl)("several executors on PostgreSQL, one killed mid-burst", () => {
  let upstream: FakeUpstream;
  let database: FreshDatabase;
  const dir = mkdtempSync(join(tmpdir(), "shaker-cluster-"));
  const servers: Record<string, ServerProcess> = {};
  let edgeUrl = "";

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    database = await freshDatabase();
    const corePort = await freePort();
    const coreUrl = `http://127.0.0.1:${corePort}`;
    const common = {
      SHAKER_SERVICE_SECRET: secret,
      SHAKER_SANDBOX: "none",
      SHAKER_DATABASE_URL: database.url,
      SHAKER_DATABASE_POOL_SIZE: "4",
      SHAKER_NODE_DEAD_AFTER_SECONDS: "3",
      SHAKER_REGISTRY_URL: coreUrl,
      SHAKER_MODELPROXY_URL: coreUrl,
      SHAKER_DATASTORE_URL: coreUrl,
    };
    const start = (name: string, services: string, port: number, extra: Record<string, string> = {}) =>
      startServerProcess({ ...common, ...extra, SHAKER_SERVICES: services, PORT: String(port), SHAKER_DATA_DIR: join(dir, name) });
    servers.core = await start("core", "registry,modelproxy,datastore", corePort, {
      SHAKER_API_KEY: key,
      SHAKER_MODELS_CONFIG: writeFakeModelsConfig(dir, upstream, {}),
    });
    for (const id of ["exec-1", "exec-2"]) {
      servers[id] = await start(id, "executor", await freePort(), { SHAKER_EXECUTOR_ID: id, SHAKER_MAX_CONCURRENT_RUNS: "100" });
    }
    servers.edge = await start("edge", "edge", await freePort());
    edgeUrl = servers.edge.url;
  });
  afterAll(async () => {
    for (const s of Object.values(servers)) await stopServerProcess(s, "SIGTERM");
    await upstream?.close();
    await database?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function api(method: string, path: string, body?: unknown) {
    const res = await fetch(edgeUrl + path, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json().catch(() => undefined)) as any };
  }
  async function cluster(): Promise<{ id: string; live: boolean; services: string[]; runs_in_flight: number }[]> {
    return (await api("GET", "/v1/cluster")).body.data;
  }
  async function allRuns(): Promise<any[]> {
    const runs: any[] = [];
    for (let offset = 0; ; offset += 100) {
      const page = (await api("GET", `/v1/runs?limit=100&offset=${offset}`)).body.data as any[];
      runs.push(...page);
      if (page.length < 100) return runs;
    }
  }

  it("lists every node, and spreads runs over both executors", async () => {
    await waitFor(
      async () => (await cluster()).filter((n) => n.live && n.services.includes("executor")).length === 2,
      "two live executors",
    );
    const nodes = await cluster();
    expect(nodes.map((n) => n.id).sort()).toEqual(expect.arrayContaining(["exec-1", "exec-2"]));
    expect(nodes).toHaveLength(4);
    for (const [ref, mode] of [
      ["burst", "sync"],
      ["burst-async", "async"],
    ]) {
      const res = await api("POST", "/v1/workflows/upload", { workflow_ref_name: ref, script: workflow, execution_mode: mode });
      expect(res.status).toBe(201);
    }
  });

  it("ends every run of a 200-run burst when one executor is killed in its middle, and runs new ones", async () => {
    const client = new OpenAI({ apiKey: key, baseURL: `${edgeUrl}/v1`, maxRetries: 8, timeout: 60_000 });
    const outcomes: ("ok" | string)[] = [];
    const sync = async (i: number) => {
      try {
        const completion = (await client.chat.completions.create({
          model: "workflow:burst",
          messages: [{ role: "user", content: "go" }],
          ...({ input: { i } } as object),
        })) as any;
        expect(completion.output).toEqual({ i, said: [`Echo: one ${i}`, `Echo: two ${i}`] });
        outcomes.push("ok");
      } catch (e) {
        outcomes.push((e as Error).message);
      }
    };
    const asyncRun = async (i: number) => {
      const res = await api("POST", "/v1/chat/completions", { model: "workflow:burst-async", input: { i } });
      expect(res.status).toBe(202);
    };
    // 150 sync runs, 50 at a time, and 50 async ones; exec-2 is killed once the first 50 sync runs
    // are answered, while the second 50 run (each takes over a second). Killed at a fixed time, three
    // seconds in, it once had nothing left in flight on a machine that ran the burst faster.
    const queue = Array.from({ length: 150 }, (_, i) => i);
    const workers = Array.from({ length: 50 }, async () => {
      for (let i = queue.shift(); i !== undefined; i = queue.shift()) await sync(i);
    });
    await Promise.all(Array.from({ length: 50 }, (_, i) => asyncRun(1000 + i)));
    await waitFor(() => outcomes.length >= 50, "the first 50 sync runs answered", 60_000);
    const inFlightOnKilled = (await cluster()).find((n) => n.id === "exec-2")!.runs_in_flight;
    await stopServerProcess(servers["exec-2"], "SIGKILL");
    await Promise.all(workers);

    // No run stays running: each ended, resumed by exec-1 or failed as lost.
    await waitFor(async () => (await allRuns()).every((r) => r.status !== "running" && r.status !== "queued"), "every run to end", 90_000);
    const runs = await allRuns();
    expect(runs).toHaveLength(200);
    const byStatus = (s: string) => runs.filter((r) => r.status === s);
    const failed = byStatus("failed");
    for (const r of failed) expect(r.error.type, JSON.stringify(r.error)).toBe("ExecutorLost");
    expect(byStatus("succeeded").length + failed.length).toBe(200);
    // What exec-2 had in flight was taken over by exec-1: a record names the executor of its latest
    // attempt, so the runs exec-2 started are those it finished and those resumed elsewhere.
    expect(inFlightOnKilled).toBeGreaterThan(0);
    const resumed = runs.filter((r) => r.run_attempt > 1);
    expect(resumed.length).toBeGreaterThan(0);
    for (const r of resumed) expect(r.executor).toBe("exec-1");
    const startedOnKilled = runs.filter((r) => r.executor === "exec-2").length + resumed.length;
    // The async runs waited in the queue, and both executors claimed from it.
    const queued = runs.filter((r) => r.workflow_ref_name === "burst-async");
    expect(queued).toHaveLength(50);
    expect(queued.filter((r) => r.executor === "exec-2" || r.run_attempt > 1).length).toBeGreaterThan(0);
    expect(queued.filter((r) => r.executor === "exec-1" && r.run_attempt === 1).length).toBeGreaterThan(0);
    // Both executors took runs of the burst (after the kill, exec-1 takes every new one).
    expect(startedOnKilled).toBeGreaterThan(20);
    expect(200 - startedOnKilled).toBeGreaterThan(20);
    // Every sync caller got its answer: the SDK's retries attached to the run exec-1 took over.
    expect(outcomes.filter((o) => o !== "ok")).toEqual([]);
    // The cluster says exec-2 is dead.
    expect((await cluster()).find((n) => n.id === "exec-2")?.live).toBe(false);

    // New runs still succeed, on exec-1.
    for (let i = 0; i < 5; i++) {
      const completion = (await client.chat.completions.create({
        model: "workflow:burst",
        messages: [{ role: "user", content: "again" }],
        ...({ input: { i: 500 + i } } as object),
      })) as any;
      expect(completion.output.i).toBe(500 + i);
    }
  });
});
