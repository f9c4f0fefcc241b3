// How long the `shaker` command takes, end to end as a user waits for it (process start to exit),
// next to `node -e ''` measured in the same rounds: what Node itself takes to start and stop on this
// machine. Each round runs every command once, in turn, so a drift of the machine's speed hits all
// alike. The server of `runs` and `invoke` runs in this process: the commands are spawned
// asynchronously, so it keeps answering while this process waits for them.
import { execFile } from "node:child_process";
import { join } from "node:path";
import { startBenchServer } from "./server.js";
import { fmt, report, summary } from "./stats.js";

const bin = join(new URL("..", import.meta.url).pathname, "bin/shaker.js");

/** wall runs `node ARGS` and resolves with how long it took, in ms; a failure rejects. */
function wall(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    execFile(process.execPath, args, { env: { ...process.env, ...env }, timeout: 60_000 }, (err, _stdout, stderr) => {
      if (err) reject(new Error(`node ${args.join(" ")} failed: ${stderr || err.message}`));
      else resolve(performance.now() - t);
    });
  });
}

interface Case {
  name: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  target?: number;
  times: number[];
}

export async function benchCli(): Promise<void> {
  const server = await startBenchServer({ workers: 1 });
  try {
    await server.upload("trivial", "def execute(ctx):\n    return {'ok': True, 'n': (ctx.input or {}).get('n')}\n");
    const env = { SHAKER_URL: server.url, SHAKER_API_KEY: server.apiKey };
    const baseline: Case = { name: "node -e ''", args: ["-e", ""], times: [] };
    const cases: Case[] = [
      { name: "shaker --help", args: [bin, "--help"], target: 150, times: [] },
      { name: "shaker --version", args: [bin, "--version"], target: 150, times: [] },
      { name: "shaker help upload", args: [bin, "help", "upload"], target: 150, times: [] },
      { name: "shaker runs", args: [bin, "runs"], target: 300, times: [] },
      { name: "shaker invoke (trivial workflow)", args: [bin, "invoke", "trivial", "--input", '{"n": 1}'], target: 300, times: [] },
      // What every command cost before the light CLI: the sources through tsx (the server's modules
      // are no longer loaded for --help; they were: 2-3 s).
      { name: "shaker --help through tsx", args: [bin, "--help"], env: { SHAKER_CLI_FROM_SOURCES: "1" }, times: [] },
    ];
    // The first round builds the light CLI when it is missing or stale, and warms the disk cache.
    for (const c of [baseline, ...cases]) await wall(c.args, { ...env, ...c.env });
    const rounds = Number(process.env.BENCH_CLI_ROUNDS ?? 20);
    for (let round = 0; round < rounds; round++) {
      for (const c of [baseline, ...cases]) c.times.push(await wall(c.args, { ...env, ...c.env }));
    }
    const b = summary(baseline.times);
    const bMin = Math.min(...baseline.times);
    for (const c of cases) {
      const s = summary(c.times);
      const min = Math.min(...c.times);
      const target = c.target === undefined ? "" : `; target ≤ ${c.target} ms`;
      report(
        `cli: ${c.name}`,
        `p50 ${fmt(s.p50)} ms min ${fmt(min)} ms`,
        `p50 ${fmt(b.p50)} ms min ${fmt(bMin)} ms (node -e '')`,
        s.p50 / b.p50,
        `(${fmt(s.p50 - b.p50)} ms more than Node at p50${target})`,
      );
    }
  } finally {
    await server.close();
  }
}
