// The Executor under load, through the REST edge: throughput of trivial runs, and many slow runs at
// once (a workflow that sleeps 1 s stands in for a slow model). Each against a baseline that spawns
// python3 per run at the same concurrency, measured in the same run.
import { spawn } from "node:child_process";
import type { TestServer } from "../test/helpers.js";
import { createCaller } from "./client.js";
import { startBenchServer } from "./server.js";
import { report } from "./stats.js";

function spawnPython(code: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn("python3", ["-c", code], { stdio: ["ignore", "pipe", "inherit"] });
    child.stdout.resume();
    child.on("error", reject);
    child.on("close", (status) => (status === 0 ? resolve() : reject(new Error(`python3 exit ${status}`))));
  });
}

function invoker(server: TestServer, model: string): () => Promise<void> {
  const caller = createCaller(server.url, { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" }, 256);
  const body = JSON.stringify({ model, input: { n: 1 } });
  return async () => {
    const res = await caller.post("/v1/chat/completions", body);
    if (res.status !== 200) throw new Error(`invoke failed: ${res.status} ${res.body}`);
  };
}

/** inFlight runs `total` calls of `fn`, `concurrency` at a time; returns the wall time in ms. */
async function inFlight(total: number, concurrency: number, fn: () => Promise<void>): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next++ < total) await fn();
    }),
  );
  return performance.now() - t0;
}

export async function benchExecutor(): Promise<void> {
  const server = await startBenchServer({ workers: 2, maxConcurrentRuns: 1000, maxConcurrentRunsPerAccount: 1000 });
  try {
    await server.upload("trivial", "def execute(ctx):\n    return {'ok': True, 'n': (ctx.input or {}).get('n')}\n");
    await server.upload("slow", "import time\n\ndef execute(ctx):\n    time.sleep(1)\n    return {'slept': 1}\n", { timeout_seconds: 30 });
    const trivial = invoker(server, "workflow:trivial");
    const slow = invoker(server, "workflow:slow");
    await inFlight(100, 8, trivial);

    // Throughput: trivial runs, 16 in flight, against python3 spawned per run, 16 in flight.
    const total = Number(process.env.BENCH_THROUGHPUT_RUNS ?? 1000);
    const concurrency = 16;
    const shakerMs = await inFlight(total, concurrency, trivial);
    const spawnTotal = Math.max(32, Math.floor(total / 10));
    const spawnMs = await inFlight(spawnTotal, concurrency, () => spawnPython("import json\nprint(json.dumps({'ok': True}))"));
    const rate = total / (shakerMs / 1000);
    const spawnRate = spawnTotal / (spawnMs / 1000);
    report(
      "executor: trivial runs/s, 16 in flight",
      `${rate.toFixed(0)} runs/s`,
      `${spawnRate.toFixed(0)} runs/s (spawn)`,
      rate / spawnRate,
      "(target ≥ 300 runs/s)",
    );

    // 200 runs that each wait 1 s, all at once: the wall time, against 200 python3 spawned at once
    // that each sleep 1 s. The ideal is 1 s.
    const n = Number(process.env.BENCH_SLOW_RUNS ?? 200);
    await slow();
    let t0 = performance.now();
    await Promise.all(Array.from({ length: n }, () => slow()));
    const slowMs = performance.now() - t0;
    t0 = performance.now();
    await Promise.all(Array.from({ length: n }, () => spawnPython("import time\ntime.sleep(1)")));
    const spawnSlowMs = performance.now() - t0;
    report(
      `executor: ${n} runs × 1 s at once, wall`,
      `${(slowMs / 1000).toFixed(2)} s`,
      `${(spawnSlowMs / 1000).toFixed(2)} s (spawn)`,
      spawnSlowMs / slowMs,
      "(target ≤ 2 s)",
    );
  } finally {
    await server.close();
  }
}
