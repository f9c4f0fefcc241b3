// The benchmarks' server: Shaker with the isolation `npm start` gives runs (SHAKER_SANDBOX=auto:
// bubblewrap where it is installed), not the tests' unsandboxed one, and a line saying what applied.
// Unsandboxed, each run's TMPDIR is made and removed on the host's /tmp (a disk here): measured in
// one process against the default, p50 0.2-0.26 ms higher and 12-14% fewer runs/s.
import type { Config } from "../services/shared/config.js";
import { startTestServer, type TestServer } from "../test/helpers.js";

export async function startBenchServer(overrides: Partial<Config> = {}, env: NodeJS.ProcessEnv = {}): Promise<TestServer> {
  const server = await startTestServer({ sandbox: "auto", ...overrides }, env);
  process.stdout.write(`(runs: ${server.shaker.isolation})\n`);
  return server;
}
