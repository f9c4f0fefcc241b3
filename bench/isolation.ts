// What confining runs costs: the same trivial workflow on two servers of this build in one process,
// one confining its runs as `npm start` does (SHAKER_SANDBOX=auto) and one not (SHAKER_SANDBOX=none),
// measured in alternating blocks (A B A B …) so a drift of this machine's speed hits both alike.

import type { TestServer } from "../test/helpers.js";
import { type Caller, createCaller } from "./client.js";
import { startBenchServer } from "./server.js";
import { fmt, report, summary, throughputAB } from "./stats.js";

const script = "def execute(ctx):\n    return {'ok': True, 'n': (ctx.input or {}).get('n')}\n";

interface Side {
  server: TestServer;
  caller: Caller;
  latencies: number[];
}

async function open(sandbox: "auto" | "none"): Promise<Side> {
  const server = await startBenchServer({ workers: 2, sandbox });
  await server.upload("trivial", script);
  const caller = createCaller(server.url, { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" });
  return { server, caller, latencies: [] };
}

const body = JSON.stringify({ model: "workflow:trivial", input: { n: 1 } });

async function invoke(side: Side): Promise<void> {
  const res = await side.caller.post("/v1/chat/completions", body);
  if (res.status !== 200) throw new Error(`invoke failed: ${res.status} ${res.body}`);
}

export async function benchIsolation(): Promise<void> {
  const confined = await open("auto");
  const open_ = await open("none");
  try {
    if (!confined.server.shaker.isolation.startsWith("confined")) {
      process.stdout.write("(this host cannot confine runs: nothing to compare)\n");
      return;
    }
    const warmup = Number(process.env.BENCH_WARMUP ?? 1000);
    for (const side of [confined, open_]) for (let i = 0; i < warmup; i++) await invoke(side);
    const blocks = Number(process.env.BENCH_ISOLATION_BLOCKS ?? 6);
    for (let block = 0; block < blocks; block++) {
      for (const side of block % 2 === 0 ? [confined, open_] : [open_, confined]) {
        for (let i = 0; i < 100; i++) {
          const t = performance.now();
          await invoke(side);
          side.latencies.push(performance.now() - t);
        }
      }
    }
    const [cRate, oRate] = await throughputAB(confined, open_, invoke);
    // A large emitted value costs what copying it costs: 10x the bytes, about 10x the time (it was
    // quadratic: one 48 MiB emit took 47-62 s of server CPU).
    await confined.server.upload("emitter", "def execute(ctx):\n    ctx.emit('x' * ctx.input['bytes'])\n    return 'done'\n");
    const emitMs = async (bytes: number) => {
      const body = JSON.stringify({ model: "workflow:emitter", input: { bytes }, stream: true });
      const times: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t = performance.now();
        const res = await confined.caller.post("/v1/chat/completions", body);
        if (res.status !== 200 || res.body.length < bytes) throw new Error(`emit of ${bytes} bytes failed: ${res.status}`);
        times.push(performance.now() - t);
      }
      return summary(times).p50;
    };
    const small = await emitMs(Math.round(4.8 * 1024 * 1024));
    const large = await emitMs(48 * 1024 * 1024);
    report(
      "isolation: one 48 MiB ctx.emit, streamed",
      `p50 ${fmt(large)} ms`,
      `p50 ${fmt(small)} ms (4.8 MiB)`,
      large / small,
      "(linear: about 10x)",
    );

    const c = summary(confined.latencies);
    const o = summary(open_.latencies);
    report(
      "isolation: warm trivial invoke, confined",
      `p50 ${fmt(c.p50)} ms p99 ${fmt(c.p99)} ms`,
      `p50 ${fmt(o.p50)} ms (none)`,
      c.p50 / o.p50,
      `(added ${fmt(c.p50 - o.p50)} ms at p50; target ≤ 0.5 ms)`,
    );
    report(
      "isolation: trivial runs/s, 16 in flight",
      `${cRate.toFixed(0)} runs/s confined`,
      `${oRate.toFixed(0)} runs/s (none)`,
      cRate / oRate,
      `(${((1 - cRate / oRate) * 100).toFixed(1)}% fewer; target ≤ 15%)`,
    );
  } finally {
    confined.caller.close();
    open_.caller.close();
    await confined.server.close();
    await open_.server.close();
  }
}
