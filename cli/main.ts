import { loadConfig } from "../services/shared/config.js";
import { runDatastores } from "./datastores.js";
import { CliError, HelpRequested } from "./http.js";
import { runInvoke } from "./invoke.js";
import type { CliIo } from "./io.js";
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

/**
 * serve runs Shaker until SIGINT or SIGTERM (or io.signal) and resolves with the exit code once it has
 * shut down: 0, or 1 when the shutdown failed or a second signal came before it ended.
 */
async function serve(io: CliIo): Promise<number> {
  const config = loadConfig(io.env);
  const shaker = await startShaker(config);
  io.stdout(`Shaker is listening on ${shaker.url} (data in ${config.dataDir})\n`);
  io.stdout(`Runs: ${shaker.isolation}\n`);
  if (shaker.generatedApiKey) {
    io.stdout(
      `\nCreated the default account's API key. It is shown only this once; keep it:\n\n  ${shaker.generatedApiKey}\n\n` +
        `  export SHAKER_API_KEY=${shaker.generatedApiKey}\n\n`,
    );
  }
  let onSigint = () => {};
  let onSigterm = () => {};
  let onAbort = () => {};
  const code = await new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (why: string) => {
      if (stopping) return resolve(1);
      stopping = true;
      io.stdout(`${why}: shutting down\n`);
      shaker.close().then(
        () => resolve(0),
        (e: unknown) => {
          io.stderr(`shutdown failed: ${(e as Error).message}\n`);
          resolve(1);
        },
      );
    };
    onSigint = () => stop("SIGINT");
    onSigterm = () => stop("SIGTERM");
    onAbort = () => stop("stopped");
    process.on("SIGINT", onSigint);
    process.on("SIGTERM", onSigterm);
    if (io.signal?.aborted) onAbort();
    else io.signal?.addEventListener("abort", onAbort, { once: true });
  });
  process.off("SIGINT", onSigint);
  process.off("SIGTERM", onSigterm);
  io.signal?.removeEventListener("abort", onAbort);
  return code;
}

/** command runs one command; it returns normally on success and throws how it failed. */
async function command(argv: string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv;
  switch (name) {
    case "serve":
      return serve(io);
    case "upload":
      await runUpload(rest, io);
      return 0;
    case "validate":
      await runValidate(rest, io);
      return 0;
    case "invoke":
      await runInvoke(rest, io);
      return 0;
    case "runs":
      await runRuns(rest, io);
      return 0;
    case "datastores":
      await runDatastores(rest, io);
      return 0;
    case "keys":
      await runKeys(rest, io.env, (text) => io.stdout(text));
      return 0;
    case undefined:
    case "help":
    case "--help":
    case "-h":
      io.stdout(usage);
      return 0;
    default:
      throw new CliError(`unknown command '${name}'\n${usage.trimEnd()}`, 2);
  }
}

/**
 * main runs the `shaker` command `argv` (without node and the script) with `io`, and resolves with its
 * exit code, also left in io.exitCode. It never exits the process: bin/shaker.js does, with that code.
 * A failure is one line on stderr (`shaker: ...`); a usage mistake exits 2.
 */
export async function main(argv: string[], io: CliIo): Promise<number> {
  try {
    io.exitCode = await command(argv, io);
  } catch (e) {
    if (e instanceof HelpRequested) {
      io.stdout(e.text);
      io.exitCode = 0;
    } else if (e instanceof UsageError) {
      io.stderr(`shaker keys: ${e.message}\n(see shaker keys --help)\n`);
      io.exitCode = 2;
    } else {
      io.stderr(`shaker: ${e instanceof Error ? e.message : String(e)}\n`);
      io.exitCode = e instanceof CliError ? e.exitCode : 1;
    }
  }
  return io.exitCode;
}

export { type CliIo, processIo } from "./io.js";
