// The benchmarks' server: Shaker with the isolation `npm start` gives runs (SHAKER_SANDBOX=auto: the
// kernel's confinement where it works), not the tests' unconfined one, and a line saying what
// applied. bench/isolation.ts compares the two in one run.
import type { Config } from "../services/shared/config.js";
import { startTestServer, type TestServer } from "../test/helpers.js";

export async function startBenchServer(overrides: Partial<Config> = {}, env: NodeJS.ProcessEnv = {}): Promise<TestServer> {
  const sandbox = process.env.SHAKER_SANDBOX === "none" ? "none" : "auto";
  const server = await startTestServer({ sandbox, ...overrides }, env);
  process.stdout.write(`(runs: ${server.shaker.isolation})\n`);
  return server;
}
