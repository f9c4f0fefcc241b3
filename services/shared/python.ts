import { spawn } from "node:child_process";

/** Options of runPythonJson. */
export interface RunPythonJsonOptions {
  /** python is the interpreter. */
  python: string;
  /** script is the Python file to run. */
  script: string;
  /** input is written to its stdin as JSON. */
  input: unknown;
  /** timeoutMs kills the process after this long. */
  timeoutMs: number;
  /** signal aborts the call. */
  signal?: AbortSignal;
}

/** runPythonJson runs a stdlib Python script that reads JSON on stdin and prints JSON; throws with its stderr on failure. */
export function runPythonJson<T>(options: RunPythonJsonOptions): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(options.python, ["-I", "-S", options.script], {
      stdio: ["pipe", "pipe", "pipe"],
      timeout: options.timeoutMs,
      killSignal: "SIGKILL",
      signal: options.signal,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (code !== 0) {
        const why = signal ? `killed by ${signal}` : `exit ${code}`;
        reject(new Error(`${options.script}: ${why}: ${Buffer.concat(err).toString("utf8").slice(-2000)}`));
        return;
      }
      try {
        resolve(JSON.parse(Buffer.concat(out).toString("utf8")) as T);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
    child.stdin.on("error", () => {});
    child.stdin.end(JSON.stringify(options.input));
  });
}
