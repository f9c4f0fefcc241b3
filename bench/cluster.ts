// Split mode and several executors, each process a `shaker serve` of its own, as an operator starts them.
//
// 1. What split mode adds to a trivial invoke: the same workflow invoked one call after the other
//    through the edge of a Shaker split in three processes (registry + modelproxy + datastore, one
//    executor, one edge: two more hops), against one `shaker serve` running every service (the
//    baseline), both on SQLite, measured in alternating blocks so a drift of the machine hits both.
// 2. What a second executor buys: 400 runs, each waiting 1 s on a slow model, sent at once through
//    one edge to executors capped at 100 runs each (a 429 is retried after its Retry-After, and that
//    wait counts), on one PostgreSQL database (SHAKER_BENCH_DATABASE_URL's server, default the local
//    one; a fresh database, dropped after): the wall time with two executors against one. Without a
//    reachable server this part is skipped with a note.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { createDatabase, type FreshDatabase } from "../test/databases.js";
import { freePort, type ServerProcess, startServerProcess, stopServerProcess } from "../test/reliability/process.js";
import { type Caller, createCaller } from "./client.js";
import { fmt, report, summary } from "./stats.js";

const key = "sk-shaker-bench-cluster";
const secret = `bench-cluster-${randomBytes(16).toString("hex")}`;
const trivial = "def execute(ctx):\n    return 1\n";
const slowWorkflow = `
def execute(ctx):
    said = ctx.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
    return said["choices"][0]["message"]["content"]
`;
const signed = (ms: number) => (ms >= 0 ? "+" : "-") + fmt(Math.abs(ms));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** CpuMs is the CPU time, in ms, of one `shaker serve` (node) and of the Python processes under it. */
interface CpuMs {
  node: number;
  python: number;
}

/**
 * cpuOf reads /proc for the CPU time of each server process and of its Python descendants (workers,
 * fork servers, and the runs they reaped), and of the PostgreSQL backends serving `database` (when
 * the server runs on this machine). Only where there is a /proc: elsewhere, undefined.
 */
function cpuOf(pids: number[], database?: string): { byPid: Map<number, CpuMs>; postgres: number } | undefined {
  const tick = 10; // ms per clock tick (USER_HZ is 100 on Linux)
  const all = new Map<number, { ppid: number; self: number; reaped: number }>();
  let postgres = 0;
  try {
    for (const name of readdirSync("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      try {
        const stat = readFileSync(`/proc/${name}/stat`, "utf8");
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        const self = Number(f[11]) + Number(f[12]);
        all.set(Number(name), { ppid: Number(f[1]), self, reaped: Number(f[13]) + Number(f[14]) });
        // A backend's command line is "postgres: [<cluster>: ]<user> <database> <client> <state>".
        if (database && stat.includes("(postgres)") && readFileSync(`/proc/${name}/cmdline`, "utf8").split(" ").includes(database)) {
          postgres += self * tick;
        }
      } catch {
        // gone meanwhile
      }
    }
  } catch {
    return undefined;
  }
  const out = new Map<number, CpuMs>();
  for (const pid of pids) {
    const own = all.get(pid);
    if (!own) continue;
    const cpu = { node: own.self * tick, python: 0 };
    const under = (parent: number) => {
      for (const [child, p] of all) {
        if (p.ppid !== parent) continue;
        cpu.python += (p.self + p.reaped) * tick;
        under(child);
      }
    };
    under(pid);
    out.set(pid, cpu);
  }
  return { byPid: out, postgres };
}

/** Processes started by this benchmark, stopped when it ends whatever happened. */
class Processes {
  private all: ServerProcess[] = [];
  /** named are the running servers by the name they were started with. */
  readonly named = new Map<string, ServerProcess>();
  readonly dir = mkdtempSync(join(tmpdir(), "shaker-bench-cluster-"));
  /** database is the PostgreSQL database the servers share, whose backends cpu() counts too. */
  database?: string;

  /** start runs `shaker serve` with this environment, in a data directory of its own named `name`. */
  async start(name: string, env: Record<string, string>, port?: number): Promise<ServerProcess> {
    const server = await startServerProcess({
      SHAKER_SANDBOX: "none",
      ...env,
      PORT: String(port ?? (await freePort())),
      SHAKER_DATA_DIR: join(this.dir, name),
    });
    this.all.push(server);
    this.named.set(name, server);
    return server;
  }

  async stop(server: ServerProcess): Promise<void> {
    this.all = this.all.filter((s) => s !== server);
    for (const [name, s] of this.named) if (s === server) this.named.delete(name);
    await stopServerProcess(server, "SIGTERM");
  }

  /** cpu is the CPU time of every running server (and its Python processes) now. */
  cpu(): Map<string, CpuMs> {
    const read = cpuOf(
      [...this.named.values()].map((s) => s.proc.pid!),
      this.database,
    );
    const out = new Map<string, CpuMs>();
    for (const [name, s] of this.named) {
      const cpu = read?.byPid.get(s.proc.pid!);
      if (cpu) out.set(name, cpu);
    }
    if (read && this.database) out.set("PostgreSQL", { node: read.postgres, python: 0 });
    return out;
  }

  /** cpuPerRun says what `runs` runs cost each process since `before` (from cpu()), in ms of CPU per run. */
  cpuPerRun(before: Map<string, CpuMs>, runs: number): string {
    const parts: string[] = [];
    let total = 0;
    for (const [name, now] of this.cpu()) {
      const was = before.get(name);
      if (!was) continue;
      const node = (now.node - was.node) / runs;
      const python = (now.python - was.python) / runs;
      total += node + python;
      parts.push(`${name} ${node.toFixed(1)}${python > 0 ? ` + Python ${python.toFixed(1)}` : ""}`);
    }
    return parts.length > 0 ? `CPU per run (ms): ${parts.join(", ")}; ${total.toFixed(1)} in all` : "";
  }

  async close(): Promise<void> {
    for (const s of [...this.all].reverse()) await this.stop(s);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

async function api(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json().catch(() => undefined)) as any };
}

async function upload(base: string, name: string, script: string): Promise<void> {
  const res = await api(base, "POST", "/v1/workflows/upload", { workflow_ref_name: name, script, execution_mode: "sync" });
  if (res.status !== 201) throw new Error(`upload of ${name} failed: ${res.status} ${JSON.stringify(res.body)}`);
}

/**
 * waitForExecutors waits until GET /v1/cluster lists exactly these executors as live, then for two
 * more heartbeats: the edge routes by the nodes of its own latest heartbeat.
 */
async function waitForExecutors(edgeUrl: string, ids: string[], heartbeatMs: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const res = await api(edgeUrl, "GET", "/v1/cluster");
    const live = ((res.body?.data ?? []) as any[])
      .filter((n) => n.live && n.services.includes("executor"))
      .map((n) => n.id as string)
      .sort();
    if (JSON.stringify(live) === JSON.stringify([...ids].sort())) break;
    if (Date.now() > deadline) throw new Error(`the cluster lists live executors ${live.join(", ") || "none"}, not ${ids.join(", ")}`);
    await sleep(200);
  }
  await sleep(2 * heartbeatMs + 100);
}

// --- 1. split mode's added latency ---------------------------------------------------------------

async function benchSplitLatency(processes: Processes): Promise<void> {
  const embedded = await processes.start("embedded", { SHAKER_API_KEY: key });

  const [corePort, executorPort] = [await freePort(), await freePort()];
  const peers = {
    SHAKER_SERVICE_SECRET: secret,
    SHAKER_REGISTRY_URL: `http://127.0.0.1:${corePort}`,
    SHAKER_MODELPROXY_URL: `http://127.0.0.1:${corePort}`,
    SHAKER_DATASTORE_URL: `http://127.0.0.1:${corePort}`,
    SHAKER_EXECUTOR_URL: `http://127.0.0.1:${executorPort}`,
  };
  await processes.start("core", { ...peers, SHAKER_SERVICES: "registry,modelproxy,datastore", SHAKER_API_KEY: key }, corePort);
  await processes.start("executor", { ...peers, SHAKER_SERVICES: "executor", SHAKER_EXECUTOR_ID: "exec-split" }, executorPort);
  const edge = await processes.start("edge", { ...peers, SHAKER_SERVICES: "edge" });

  const body = JSON.stringify({ model: "workflow:trivial", input: {} });
  const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };
  const sides: { name: string; caller: Caller; samples: number[] }[] = [];
  for (const server of [embedded, edge]) {
    await upload(server.url, "trivial", trivial);
    sides.push({ name: server === edge ? "split" : "embedded", caller: createCaller(server.url, headers, 4), samples: [] });
  }
  const invoke = async (caller: Caller) => {
    const res = await caller.post("/v1/chat/completions", body);
    if (res.status !== 200) throw new Error(`invoke failed: ${res.status} ${res.body}`);
  };
  try {
    // Warm: every process has served traffic for a while (bench/invoke.ts: V8 optimises the hot
    // path over the first several hundred invokes; both sides get as many).
    // On a loaded machine (an invoke of 50 ms, not 3), as many as fit in 15 s, to keep the whole in budget.
    const warmup = Number(process.env.BENCH_WARMUP ?? 400);
    for (const side of sides) {
      const until = performance.now() + 15_000;
      for (let i = 0; i < warmup && performance.now() < until; i++) await invoke(side.caller);
    }
    // Sequential invokes in alternating blocks (A B, B A, …) of 50.
    const total = Number(process.env.BENCH_ITERATIONS ?? 200);
    const block = 50;
    for (let round = 0; round * block < total; round++) {
      for (const side of round % 2 === 0 ? sides : [...sides].reverse()) {
        for (let i = 0; i < Math.min(block, total - round * block); i++) {
          const t = performance.now();
          await invoke(side.caller);
          side.samples.push(performance.now() - t);
        }
      }
    }
    const [e, s] = sides.map((side) => summary(side.samples));
    report(
      "split: trivial invoke, 3 processes, warm",
      `p50 ${fmt(s.p50)} ms p99 ${fmt(s.p99)} ms`,
      `p50 ${fmt(e.p50)} ms p99 ${fmt(e.p99)} ms (embedded)`,
      s.p50 / e.p50,
      `(split: ${signed(s.p50 - e.p50)} ms at p50, ${signed(s.p99 - e.p99)} ms at p99; n=${s.n} each)`,
    );
  } finally {
    for (const side of sides) side.caller.close();
  }
}

// --- 2. scaling with executors -------------------------------------------------------------------

/** SlowUpstream is an OpenAI-compatible model server that answers every chat completion after delayMs. */
interface SlowUpstream {
  url: string;
  served: number;
  /** inFlight is the calls being answered now; peak the most at once since it was last reset. */
  inFlight: number;
  peak: number;
  close(): Promise<void>;
}

async function startSlowUpstream(delayMs: number): Promise<SlowUpstream> {
  const upstream: SlowUpstream = { url: "", served: 0, inFlight: 0, peak: 0, close: async () => {} };
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    for await (const _ of req);
    upstream.peak = Math.max(upstream.peak, ++upstream.inFlight);
    await sleep(delayMs);
    upstream.inFlight--;
    const body = JSON.stringify({
      id: `chatcmpl-slow-${++upstream.served}`,
      object: "chat.completion",
      created: Math.floor(Date.now() / 1000),
      model: "slow",
      choices: [{ index: 0, message: { role: "assistant", content: "slowly" }, finish_reason: "stop", logprobs: null }],
      usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
    });
    res.writeHead(200, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) });
    res.end(body);
  };
  const server = createServer((req, res) => void handle(req, res).catch(() => res.destroy()));
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  upstream.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  upstream.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return upstream;
}

/** postgresDatabase creates a fresh database on the server at url, or says why it cannot (undefined). */
async function postgresDatabase(url: string): Promise<FreshDatabase | undefined> {
  try {
    return await createDatabase(url, "shaker_bench");
  } catch (e) {
    process.stdout.write(`(PostgreSQL at ${new URL(url).host} unreachable: ${(e as Error).message}; executor scaling skipped)\n`);
    return undefined;
  }
}

/** Burst is what one burst of runs measured. */
interface Burst {
  wallMs: number;
  /** limited counts the 429s, waitedMs the Retry-After time they cost (summed over runs). */
  limited: number;
  waitedMs: number;
  /** attemptMs are the durations of the admitted attempts: what a run took once it had a place. */
  attemptMs: number[];
  errors: string[];
  runIds: string[];
}

/** burst sends `count` runs at once through the edge, each retried after a 429's Retry-After until admitted. */
async function burst(edgeUrl: string, count: number): Promise<Burst> {
  const out: Burst = { wallMs: 0, limited: 0, waitedMs: 0, attemptMs: [], errors: [], runIds: [] };
  const body = JSON.stringify({ model: "workflow:slow", input: {} });
  const one = async () => {
    for (;;) {
      const t = performance.now();
      let res: Response;
      try {
        res = await fetch(`${edgeUrl}/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
          body,
        });
      } catch (e) {
        out.errors.push(`fetch: ${(e as Error).message}`);
        return;
      }
      const text = await res.text();
      if (res.status === 429) {
        const waitMs = Number(res.headers.get("retry-after") ?? 1) * 1000;
        out.limited++;
        out.waitedMs += waitMs;
        await sleep(waitMs);
        continue;
      }
      if (res.status !== 200) {
        out.errors.push(`${res.status} ${text.slice(0, 200)}`);
        const runId = res.headers.get("x-request-id");
        if (runId) out.runIds.push(runId);
        return;
      }
      out.attemptMs.push(performance.now() - t);
      out.runIds.push(res.headers.get("x-request-id") ?? "");
      return;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: count }, one));
  out.wallMs = performance.now() - t0;
  return out;
}

/** executorsOf counts the runs of `runIds` by the executor their record names. */
async function executorsOf(edgeUrl: string, runIds: string[]): Promise<Record<string, number>> {
  const wanted = new Set(runIds);
  const counts: Record<string, number> = {};
  for (let offset = 0; ; offset += 100) {
    const page = ((await api(edgeUrl, "GET", `/v1/runs?limit=100&offset=${offset}`)).body?.data ?? []) as any[];
    for (const r of page) if (wanted.has(r.run_id)) counts[r.executor] = (counts[r.executor] ?? 0) + 1;
    if (page.length < 100) return counts;
  }
}

async function benchExecutorScaling(): Promise<void> {
  const database = await postgresDatabase(process.env.SHAKER_BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test");
  if (!database) return;
  const processes = new Processes();
  processes.database = new URL(database.url).pathname.slice(1);
  const delayMs = 1000;
  const runs = Number(process.env.BENCH_CLUSTER_RUNS ?? 400);
  // The issue's case is a cap of 100; a small cap (BENCH_CLUSTER_CAP=10) shows what a second
  // executor buys when the cap binds rather than the machine's CPU.
  const cap = Number(process.env.BENCH_CLUSTER_CAP ?? 100);
  const upstream = await startSlowUpstream(delayMs);
  try {
    const modelsConfig = join(processes.dir, "models.json");
    writeFileSync(
      modelsConfig,
      JSON.stringify({
        providers: { slow: { base_url: upstream.url, api_key: "sk-upstream", timeout_ms: 30_000, max_retries: 0 } },
        models: { slow: { provider: "slow", model: "slow" } },
        default_provider: "slow",
        default_model: "slow",
      }),
    );
    // The default dead-after time (15 s: a heartbeat every 3 s): a shorter one lets a loaded
    // machine's late heartbeat count a busy executor dead, and the other take over its runs.
    const heartbeatMs = 3000;
    const corePort = await freePort();
    const coreUrl = `http://127.0.0.1:${corePort}`;
    const common = {
      SHAKER_SERVICE_SECRET: secret,
      SHAKER_DATABASE_URL: database.url,
      SHAKER_REGISTRY_URL: coreUrl,
      SHAKER_MODELPROXY_URL: coreUrl,
      SHAKER_DATASTORE_URL: coreUrl,
      // Every connection here comes from 127.0.0.1: the load generator's 400 and the runs' own.
      SHAKER_MAX_CONNECTIONS_PER_ADDRESS: "0",
    };
    const startExecutor = (id: string) =>
      processes.start(id, { ...common, SHAKER_SERVICES: "executor", SHAKER_EXECUTOR_ID: id, SHAKER_MAX_CONCURRENT_RUNS: String(cap) });
    await processes.start(
      "core",
      { ...common, SHAKER_SERVICES: "registry,modelproxy,datastore", SHAKER_API_KEY: key, SHAKER_MODELS_CONFIG: modelsConfig },
      corePort,
    );
    await startExecutor("exec-1");
    const edge = await processes.start("edge", { ...common, SHAKER_SERVICES: "edge" });
    await upload(edge.url, "slow", slowWorkflow);

    const measure = async (ids: string[]) => {
      await waitForExecutors(edge.url, ids, heartbeatMs);
      // Warm: a few slow runs on every executor (workers, connections to the core and the upstream).
      const warm = await burst(edge.url, 20 * ids.length);
      if (warm.errors.length > 0) throw new Error(`warm-up runs failed: ${warm.errors.slice(0, 3).join("; ")}`);
      await sleep(2 * heartbeatMs);
      const load0 = loadavg()[0];
      upstream.peak = 0;
      const cpu0 = processes.cpu();
      const b = await burst(edge.url, runs);
      const cpu = processes.cpuPerRun(cpu0, runs);
      const spread = await executorsOf(edge.url, b.runIds);
      const a = summary(b.attemptMs);
      process.stdout.write(
        `  ${ids.length} executor(s): ${runs} runs in ${(b.wallMs / 1000).toFixed(2)} s (floor ${Math.ceil(runs / (cap * ids.length))} s of 1 s waves); ` +
          `admitted attempt p50 ${fmt(a.p50)} ms p99 ${fmt(a.p99)} ms (upstream alone ${delayMs} ms); ` +
          `${b.limited} × 429 (${(b.waitedMs / 1000).toFixed(0)} s of Retry-After over all runs); ` +
          `runs by executor ${JSON.stringify(spread)}, at most ${upstream.peak} model calls at once; load ${load0.toFixed(1)}→${loadavg()[0].toFixed(1)}` +
          (b.errors.length > 0 ? `; ${b.errors.length} errors, first: ${b.errors[0]}` : "") +
          "\n" +
          (cpu ? `  ${cpu} (not this client or the model server)\n` : ""),
      );
      if (a.p50 > 2 * delayMs) {
        process.stdout.write(
          `  (this machine does not hold ${cap * ids.length} runs at once well: an admitted run took ${fmt(a.p50 / 1000)} s at p50 for a ` +
            `${delayMs / 1000} s model call, so the burst is bound by the CPU that starts and relays runs, not by the executors' cap)\n`,
        );
      }
      return b;
    };
    const one = await measure(["exec-1"]);
    await startExecutor("exec-2");
    const two = await measure(["exec-1", "exec-2"]);
    report(
      `executors: ${runs} slow runs at once, cap ${cap}`,
      `${(two.wallMs / 1000).toFixed(2)} s (2 executors)`,
      `${(one.wallMs / 1000).toFixed(2)} s (1 executor)`,
      one.wallMs / two.wallMs,
      "(speed-up; target ≥ 1.8x)",
    );
  } finally {
    await processes.close();
    await upstream.close();
    await database.drop();
  }
}

export async function benchCluster(): Promise<void> {
  // Other work on the machine shows here first: say how busy it was.
  process.stdout.write(`(load average ${loadavg()[0].toFixed(1)} on ${availableParallelism()} cores at start)\n`);
  const latency = new Processes();
  try {
    await benchSplitLatency(latency);
  } finally {
    await latency.close();
  }
  await benchExecutorScaling();
}
