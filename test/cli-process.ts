// Helpers for the CLI tests: a Shaker started as a user starts it (`node bin/shaker.js serve`, PORT=0)
// and the `shaker` command run as a child process. Everything is asynchronous: a synchronous child
// would block the event loop of a server running in the same process.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { main } from "../cli/main.js";

const root = new URL("..", import.meta.url).pathname;
/** bin is the installed command, bin/shaker.js. */
export const bin = join(root, "bin/shaker.js");

/** CliServer is a `shaker serve` child process on a free port with its own data directory. */
export interface CliServer {
  url: string;
  apiKey: string;
  dataDir: string;
  process: ChildProcess;
  /** shaker runs the command against this server (SHAKER_URL and SHAKER_API_KEY set). */
  shaker(args: string[], env?: NodeJS.ProcessEnv): Promise<CliResult>;
  /** request calls a REST route with the server's key. */
  request(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  /** hasRoute is false when the edge answers 404 `no route` (a route landing in parallel). */
  hasRoute(method: string, path: string, body?: unknown): Promise<boolean>;
  /** modelsWork is true when a proxied model call to the local model answers. */
  modelsWork(): Promise<boolean>;
  close(): Promise<void>;
}

/** CliResult is how a `shaker` run ended. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** runShaker runs `node bin/shaker.js ARGS` and resolves with its exit code and output (never rejects). */
export function runShaker(args: string[], env: NodeJS.ProcessEnv = {}, cwd = root): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [bin, ...args],
      { cwd, env: { ...process.env, SHAKER_URL: "", SHAKER_API_KEY: "", ...env }, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : -1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** Options of runMain. */
export interface RunMainOptions {
  /** stderrIsTTY makes the command believe stderr is a terminal (progress bars). */
  stderrIsTTY?: boolean;
  /** signal stops `shaker serve`. */
  signal?: AbortSignal;
  /** onStdout sees each write to stdout as it happens (to wait for `shaker serve`'s banner). */
  onStdout?: (text: string) => void;
}

/**
 * runMain runs the `shaker` command in this process: cli/main.ts's main(argv, io) with an io that
 * collects stdout and stderr, and the environment of this process without SHAKER_URL and
 * SHAKER_API_KEY, plus `env`. Same result as runShaker, without starting Node and tsx each time.
 */
export async function runMain(args: string[], env: NodeJS.ProcessEnv = {}, options: RunMainOptions = {}): Promise<CliResult> {
  const base: NodeJS.ProcessEnv = { ...process.env };
  delete base.SHAKER_URL;
  delete base.SHAKER_API_KEY;
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    stdout: (text) => {
      stdout += text;
      options.onStdout?.(text);
    },
    stderr: (text) => void (stderr += text),
    env: { ...base, ...env },
    stderrIsTTY: options.stderrIsTTY ?? false,
    exitCode: 0,
    signal: options.signal,
  });
  return { code, stdout, stderr };
}

/** startCliServer runs `shaker serve` with PORT=0 and waits for its "listening on" line. */
export async function startCliServer(env: NodeJS.ProcessEnv = {}): Promise<CliServer> {
  const dataDir = mkdtempSync(join(tmpdir(), "shaker-cli-"));
  const apiKey = "sk-shaker-cli-test-key";
  const child = spawn(process.execPath, [bin, "serve"], {
    cwd: root,
    env: { ...process.env, PORT: "0", SHAKER_DATA_DIR: dataDir, SHAKER_API_KEY: apiKey, SHAKER_WORKERS: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let errText = "";
  child.stderr!.on("data", (b: Buffer) => (errText += b.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`shaker serve did not start: ${out}${errText}`)), 30_000);
    child.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const m = /Shaker is listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`shaker serve exited with ${code}: ${out}${errText}`));
    });
  });
  child.stdout!.resume();
  async function request(method: string, path: string, body?: unknown) {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: res.status, body: parsed as any };
  }
  return {
    url,
    apiKey,
    dataDir,
    process: child,
    shaker: (args, extra = {}) => runShaker(args, { SHAKER_URL: url, SHAKER_API_KEY: apiKey, ...extra }),
    request,
    async hasRoute(method, path, body) {
      const res = await request(method, path, body);
      return !(res.status === 404 && /^no route/.test(String(res.body?.error?.message ?? "")));
    },
    async modelsWork() {
      const res = await request("POST", "/v1/chat/completions", { model: "local", messages: [{ role: "user", content: "ping" }] });
      return res.status === 200;
    },
    async close() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
