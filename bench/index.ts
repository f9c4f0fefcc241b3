// `npm run bench`: every benchmark, each reported as a ratio against a baseline measured in the same run.

import { benchCli } from "./cli.js";
import { benchCluster } from "./cluster.js";
import { benchDatastore } from "./datastore.js";
import { benchEdge } from "./edge.js";
import { benchExecutor } from "./executor.js";
import { benchInvoke } from "./invoke.js";
import { benchIsolation } from "./isolation.js";
import { benchJournal } from "./journal.js";
import { benchModelProxy } from "./modelproxy.js";
import { benchStores } from "./stores.js";
import { benchValidate } from "./validate.js";

const benches: Record<string, () => Promise<void>> = {
  invoke: benchInvoke,
  isolation: benchIsolation,
  journal: benchJournal,
  edge: benchEdge,
  validate: benchValidate,
  datastore: benchDatastore,
  modelproxy: benchModelProxy,
  executor: benchExecutor,
  stores: benchStores,
  cli: benchCli,
  cluster: benchCluster,
};

const only = process.argv.slice(2);
for (const [name, run] of Object.entries(benches)) {
  if (only.length > 0 && !only.includes(name)) continue;
  process.stdout.write(`\n== ${name}\n`);
  await run();
}
process.exit(0);
