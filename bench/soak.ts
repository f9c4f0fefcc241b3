// `npm run soak`: steady load for SOAK_MINUTES (default 10), sampling the server's RSS every 30 s,
// to show memory stays flat. The server runs in this process; the load is a fixed number of
// concurrent invocations (SOAK_CONCURRENCY, default 32) of a workflow that emits and returns.
import { startBenchServer } from "./server.js";

const minutes = Number(process.env.SOAK_MINUTES ?? 10);
const concurrency = Number(process.env.SOAK_CONCURRENCY ?? 32);
const server = await startBenchServer({ workers: 2 });
await server.upload(
  "soak",
  "import time\ndef execute(ctx):\n    ctx.emit('tick')\n    time.sleep(0.02)\n    return {'ok': True, 'pad': 'x' * 2000}\n",
);
const until = Date.now() + minutes * 60_000;
let runs = 0;
let errors = 0;
const samples: { t: number; rssMb: number; runs: number }[] = [];
const t0 = Date.now();
const sample = () => {
  global.gc?.();
  samples.push({ t: Math.round((Date.now() - t0) / 1000), rssMb: Math.round(process.memoryUsage().rss / 1048576), runs });
  const s = samples.at(-1)!;
  process.stdout.write(`t=${s.t}s rss=${s.rssMb} MB runs=${s.runs} errors=${errors}\n`);
};
const timer = setInterval(sample, 30_000);
sample();
await Promise.all(
  Array.from({ length: concurrency }, async (_, i) => {
    while (Date.now() < until) {
      const res = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "workflow:soak", input: { i }, stream: i % 2 === 0 }),
      });
      await res.arrayBuffer();
      if (res.status !== 200) errors++;
      runs++;
    }
  }),
);
clearInterval(timer);
sample();
const warm = samples.filter((s) => s.t >= 60);
if (warm.length >= 2) {
  process.stdout.write(
    `soak: RSS after the first minute ${warm[0].rssMb} MB, at the end ${warm.at(-1)!.rssMb} MB (ratio ${(warm.at(-1)!.rssMb / warm[0].rssMb).toFixed(2)}x), ${runs} runs, ${errors} errors\n`,
  );
}
await server.close();
process.exit(0);
