// `npm run bench`: every benchmark, each reported as a ratio against a baseline measured in the same run.
import { benchExecutor } from "./executor.js";
import { benchInvoke } from "./invoke.js";

const benches: Record<string, () => Promise<void>> = {
  invoke: benchInvoke,
  executor: benchExecutor,
};

const only = process.argv.slice(2);
for (const [name, run] of Object.entries(benches)) {
  if (only.length > 0 && !only.includes(name)) continue;
  process.stdout.write(`\n== ${name}\n`);
  await run();
}
process.exit(0);
