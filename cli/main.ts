import { loadConfig } from "../services/shared/config.js";
import { runDatastores } from "./datastores.js";
import { CliError } from "./http.js";
import { runInvoke } from "./invoke.js";
import { runKeys, UsageError } from "./keys.js";
import { runRuns } from "./runs.js";
import { startShaker } from "./serve.js";
import { runUpload, runValidate } from "./upload.js";

const usage = `usage: shaker <command>

commands:
  serve       run Shaker: every service and the REST edge on one port (PORT, default 8080)
  upload      upload a workflow script as a new version (shaker upload FILE --help)
  validate    check a workflow script locally, without a server
  invoke      run a workflow and print its output (--stream prints emitted values live)
  runs        list run records, or show one with its logs, emitted values and model calls
  datastores  create, list, load (NDJSON or JSON) and search record stores
  keys        create, list and revoke API keys of accounts (shaker keys --help)

Commands that talk to a server take --server URL and --api-key KEY, or read SHAKER_URL
(default http://127.0.0.1:8080) and SHAKER_API_KEY.
`;

async function serve(): Promise<void> {
  const config = loadConfig();
  const shaker = await startShaker(config);
  process.stdout.write(`Shaker is listening on ${shaker.url} (data in ${config.dataDir})\n`);
  process.stdout.write(`Runs: ${shaker.isolation}\n`);
  if (shaker.generatedApiKey) {
    process.stdout.write(
      `\nCreated the default account's API key. It is shown only this once; keep it:\n\n  ${shaker.generatedApiKey}\n\n` +
        `  export SHAKER_API_KEY=${shaker.generatedApiKey}\n\n`,
    );
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stdout.write(`${signal}: shutting down\n`);
    shaker.close().then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`shutdown failed: ${(e as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
}

async function main(argv: string[]): Promise<void> {
  const [command] = argv;
  switch (command) {
    case "serve":
      return serve();
    case "upload":
      return runUpload(argv.slice(1));
    case "validate":
      return runValidate(argv.slice(1));
    case "invoke":
      return runInvoke(argv.slice(1));
    case "runs":
      return runRuns(argv.slice(1));
    case "datastores":
      return runDatastores(argv.slice(1));
    case "keys":
      try {
        return await runKeys(argv.slice(1), process.env, (s) => process.stdout.write(s));
      } catch (e) {
        if (!(e instanceof UsageError)) throw e;
        process.stderr.write(`shaker keys: ${e.message}\n(see shaker keys --help)\n`);
        process.exit(2);
      }
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(usage);
      return;
    default:
      process.stderr.write(`shaker: unknown command '${command}'\n${usage}`);
      process.exit(2);
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`shaker: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(e instanceof CliError ? e.exitCode : 1);
});
