// `npm run bench`: every benchmark, each reported as a ratio against a baseline measured in the same run.
import { benchDatastore } from "./datastore.js";
import { benchInvoke } from "./invoke.js";

const benches: Record<string, () => Promise<void>> = {
  invoke: benchInvoke,
  datastore: benchDatastore,
};

const only = process.argv.slice(2);
for (const [name, run] of Object.entries(benches)) {
  if (only.length > 0 && !only.includes(name)) continue;
  process.stdout.write(`\n== ${name}\n`);
  await run();
}
process.exit(0);
