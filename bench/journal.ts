// What journaling ctx calls costs: two servers of this build in one process, one journaling (the
// default) and one with SHAKER_JOURNAL=off, measured in alternating blocks (A B A B …) so a drift of
// this machine's speed hits both alike. A trivial run makes no ctx call and writes nothing extra;
// a run making 4 model calls (the built-in offline model) journals 4 answers.

import type { TestServer } from "../test/helpers.js";
import { type Caller, createCaller } from "./client.js";
import { startBenchServer } from "./server.js";
import { fmt, report, summary, throughputAB } from "./stats.js";

const trivial = "def execute(ctx):\n    return {'ok': True, 'n': (ctx.input or {}).get('n')}\n";
const calls = `
def execute(ctx):
    said = []
    for i in range(4):
        r = ctx.chat.completions.create(messages=[{"role": "user", "content": f"call {i}"}])
        said.append(r["choices"][0]["message"]["content"])
    return said
`;

interface Side {
  name: string;
  server: TestServer;
  caller: Caller;
  latencies: Record<string, number[]>;
}

async function open(name: string, journal: boolean): Promise<Side> {
  const server = await startBenchServer({ workers: 2, journal });
  await server.upload("trivial", trivial);
  await server.upload("calls", calls);
  const caller = createCaller(server.url, { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" });
  return { name, server, caller, latencies: { trivial: [], calls: [] } };
}

const bodies: Record<string, string> = {
  trivial: JSON.stringify({ model: "workflow:trivial", input: { n: 1 } }),
  calls: JSON.stringify({ model: "workflow:calls", input: {} }),
};

async function invoke(side: Side, workflow: string): Promise<void> {
  const res = await side.caller.post("/v1/chat/completions", bodies[workflow]);
  if (res.status !== 200) throw new Error(`invoke of ${workflow} failed: ${res.status} ${res.body}`);
}

export async function benchJournal(): Promise<void> {
  const on = await open("journal on", true);
  const off = await open("journal off", false);
  try {
    // Trivial runs first, while neither database holds a journal: then the runs with calls (whose
    // journal writes and deletes grow the WAL, checkpointed on another thread of this 2-core machine).
    const warmup = Number(process.env.BENCH_WARMUP ?? 500);
    const blocks = Number(process.env.BENCH_JOURNAL_BLOCKS ?? 6);
    const latencies = async (workflow: string) => {
      for (const side of [on, off]) for (let i = 0; i < warmup; i++) await invoke(side, workflow);
      for (let block = 0; block < blocks; block++) {
        for (const side of block % 2 === 0 ? [on, off] : [off, on]) {
          for (let i = 0; i < 100; i++) {
            const t = performance.now();
            await invoke(side, workflow);
            side.latencies[workflow].push(performance.now() - t);
          }
        }
      }
    };
    await latencies("trivial");
    const [aRate, bRate] = await throughputAB(on, off, (side) => invoke(side, "trivial"));
    await latencies("calls");

    for (const [workflow, target] of [
      ["trivial", "target ≤ 0.3 ms"],
      ["calls", "4 journaled model calls"],
    ]) {
      const a = summary(on.latencies[workflow]);
      const b = summary(off.latencies[workflow]);
      report(
        `journal: warm ${workflow} invoke`,
        `p50 ${fmt(a.p50)} ms p99 ${fmt(a.p99)} ms`,
        `p50 ${fmt(b.p50)} ms (off)`,
        a.p50 / b.p50,
        `(added ${fmt(a.p50 - b.p50)} ms at p50; ${target})`,
      );
    }
    report(
      "journal: trivial runs/s, 16 in flight",
      `${aRate.toFixed(0)} runs/s on`,
      `${bRate.toFixed(0)} runs/s (off)`,
      aRate / bRate,
      `(${((1 - aRate / bRate) * 100).toFixed(1)}% fewer; target ≤ 10%)`,
    );
  } finally {
    for (const side of [on, off]) {
      side.caller.close();
      await side.server.close();
    }
  }
}
