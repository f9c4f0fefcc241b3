import { readFileSync } from "node:fs";
import { clusterUsage, runCluster } from "./cluster.js";
import { datastoresUsage, runDatastores } from "./datastores.js";
import { keysUsage, serveUsage, UsageError } from "./help.js";
import { CliError, HelpRequested } from "./http.js";
import { invokeUsage, runInvoke } from "./invoke.js";
import type { CliIo } from "./io.js";
import { runRuns, runsUsage } from "./runs.js";
import { runUpload, runValidate, uploadUsage, validateUsage } from "./upload.js";

// `serve` and `keys` load the server's modules (protobuf, SQLite, every service): they are imported
// only when run, so the other commands start without them (and without tsx: bin/shaker.js runs them
// from a bundle of cli/ that cli/prebuilt.js builds, where these imports are left out).

const usage = `usage: shaker <command>

commands:
  serve       run Shaker: every service and the REST edge on one port (PORT, default 8080)
  upload      upload a workflow script as a new version
  validate    check a workflow script locally, without a server
  invoke      run a workflow and print its output (--stream prints emitted values live)
  runs        list run records, or show one with its logs, emitted values and model calls
  datastores  create, list, load (NDJSON or JSON) and search record stores
  keys        create, list and revoke API keys of accounts
  cluster     list the processes of a Shaker: services, URL, heartbeat, runs in flight
  help        print the help of a command: shaker help COMMAND (or shaker COMMAND --help)

shaker --version prints the version.

Commands that talk to a server take --server URL and --api-key KEY, or read SHAKER_URL
(default http://127.0.0.1:8080) and SHAKER_API_KEY.
`;

/**
 * serve runs Shaker until SIGINT or SIGTERM (or io.signal) and resolves with the exit code once it has
 * shut down: 0, or 1 when the shutdown failed or a second signal came before it ended.
 */
async function serve(args: string[], io: CliIo): Promise<number> {
  const { loadConfig, parseServices } = await import("../services/shared/config.js");
  const { startShaker } = await import("./serve.js");
  let services: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].split(/=(.*)/s, 2);
    if (flag !== "--services") throw new CliError(`serve: unknown argument ${JSON.stringify(args[i])}\n${serveUsage}`, 2);
    services = inline ?? args[++i];
    if (services === undefined) throw new CliError(`serve: --services needs a list\n${serveUsage}`, 2);
  }
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(io.env, services === undefined ? {} : { services: parseServices(services, "--services") });
  } catch (e) {
    throw new CliError((e as Error).message, 2);
  }
  const shaker = await startShaker(config);
  io.stdout(`Shaker is listening on ${shaker.url} (data in ${shaker.database})\n`);
  if (shaker.services.length < 5) io.stdout(`Services: ${shaker.services.join(", ")}\n`);
  if (shaker.isolation) io.stdout(`Runs: ${shaker.isolation}\n`);
  if (shaker.datastoreSearch) io.stdout(`Datastores: ${shaker.datastoreSearch}\n`);
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

/** helps is the help of each command, as `shaker help COMMAND` and `shaker COMMAND --help` print it. */
const helps: Record<string, string> = {
  serve: serveUsage,
  upload: uploadUsage,
  validate: validateUsage,
  invoke: invokeUsage,
  runs: runsUsage,
  datastores: datastoresUsage,
  keys: keysUsage,
  cluster: clusterUsage,
  help: "usage: shaker help [COMMAND]   (prints the help of COMMAND, or the list of commands)",
};

const isHelpFlag = (a: string | undefined) => a === "--help" || a === "-h";

/**
 * needsSources says the command needs the server's modules: `shaker serve` and `shaker keys`, except
 * when they are only asked for their help. bin/shaker.js runs those through tsx from the sources and
 * every other command from the prebuilt light CLI.
 */
export function needsSources(argv: string[]): boolean {
  const [name, ...rest] = argv;
  if (name === "serve") return !rest.some(isHelpFlag);
  if (name === "keys") return !(rest[0] === undefined || rest[0] === "help" || isHelpFlag(rest[0]));
  return false;
}

/** version is package.json's version. */
function version(): string {
  return (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;
}

function unknownCommand(name: string): CliError {
  return new CliError(`unknown command '${name}'\n${usage.trimEnd()}`, 2);
}

/** command runs one command; it returns normally on success and throws how it failed. */
async function command(argv: string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv;
  if ((name === "serve" || name === "keys") && !needsSources(argv)) {
    io.stdout(helps[name]!.replace(/\n*$/, "\n"));
    return 0;
  }
  switch (name) {
    case "serve":
      return serve(rest, io);
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
    case "cluster":
      await runCluster(rest, io);
      return 0;
    case "keys": {
      const { runKeys } = await import("./keys.js");
      await runKeys(rest, io.env, (text) => io.stdout(text));
      return 0;
    }
    case "--version":
      io.stdout(`shaker ${version()}\n`);
      return 0;
    case "help": {
      const [about, ...extra] = rest;
      if (about === undefined || isHelpFlag(about)) {
        io.stdout(usage);
        return 0;
      }
      if (extra.length > 0) throw new CliError(`help takes one COMMAND\n${helps.help}`, 2);
      if (!Object.hasOwn(helps, about)) throw unknownCommand(about);
      io.stdout(helps[about]!.replace(/\n*$/, "\n"));
      return 0;
    }
    case undefined:
    case "--help":
    case "-h":
      io.stdout(usage);
      return 0;
    default:
      throw unknownCommand(name);
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
