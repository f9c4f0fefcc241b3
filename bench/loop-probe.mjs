// Preloaded into a `shaker serve` the bench starts as a process of its own (NODE_OPTIONS=--import):
// its event loop's delay since the last signal, written as JSON to BENCH_LOOP_FILE on each SIGUSR2.
// Plain JavaScript: it loads before the server registers its TypeScript loader.
import { writeFileSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { isMainThread } from "node:worker_threads";

const file = process.env.BENCH_LOOP_FILE;
if (isMainThread && file) {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  let seq = 0;
  process.on("SIGUSR2", () => {
    writeFileSync(file, JSON.stringify({ seq: ++seq, p99: delay.percentile(99) / 1e6, max: delay.max / 1e6 }));
    delay.reset();
  });
}
