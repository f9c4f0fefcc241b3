import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import type { JsonObject } from "@bufbuild/protobuf";
import type { ValidationError } from "../../gen/shaker/registry/v1/registry_pb.js";

const validatorScript = new URL("./validate.py", import.meta.url).pathname;

/** ValidationResult is what the Python validator finds in a script. */
export interface ValidationResult {
  errors: ValidationError[];
  input_schema: JsonObject | null;
  output_schema: JsonObject | null;
}

interface Pending {
  resolve: (r: ValidationResult) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** Validator checks scripts with one long-lived `validate.py --serve` process. */
export interface Validator {
  validate(code: string): Promise<ValidationResult>;
  close(): void;
}

/**
 * createValidator keeps one Python process answering one JSON line per request, in order, so an
 * upload does not pay for a Python start. A process that dies or stalls past timeoutMs is killed,
 * its pending requests fail, and the next request starts a fresh one.
 */
export function createValidator(python: string, timeoutMs = 20_000): Validator {
  let child: ChildProcessWithoutNullStreams | undefined;
  const pending: Pending[] = [];
  let closed = false;

  function failAll(err: Error): void {
    for (const p of pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }

  function stop(proc: ChildProcessWithoutNullStreams, why: string): void {
    if (child === proc) child = undefined;
    proc.kill("SIGKILL");
    failAll(new Error(why));
  }

  function start(): ChildProcessWithoutNullStreams {
    const proc = spawn(python, ["-I", "-S", validatorScript, "--serve"], { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    proc.stderr.on("data", (b: Buffer) => {
      stderr = (stderr + b.toString("utf8")).slice(-2000);
    });
    proc.stdin.on("error", () => {});
    proc.on("error", (e) => stop(proc, `could not start ${python}: ${e.message}`));
    proc.on("exit", (code, signal) => {
      if (child === proc) child = undefined;
      failAll(new Error(`the validator exited (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
    });
    createInterface({ input: proc.stdout }).on("line", (line) => {
      const p = pending.shift();
      if (!p) return;
      clearTimeout(p.timer);
      try {
        p.resolve(JSON.parse(line) as ValidationResult);
      } catch (e) {
        p.reject(e as Error);
      }
    });
    // The process must not keep Node alive; it ends by itself when stdin closes.
    proc.unref();
    for (const s of [proc.stdin, proc.stdout, proc.stderr]) (s as unknown as { unref?: () => void }).unref?.();
    return proc;
  }

  return {
    validate(code) {
      if (closed) return Promise.reject(new Error("the validator is closed"));
      const proc = (child ??= start());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => stop(proc, `the validator did not answer within ${timeoutMs} ms`), timeoutMs);
        pending.push({ resolve, reject, timer });
        proc.stdin.write(JSON.stringify({ code }) + "\n");
      });
    },
    close() {
      closed = true;
      if (child) stop(child, "the validator is closed");
    },
  };
}
