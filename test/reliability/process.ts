import { spawn, type ChildProcess } from "node:child_process";

/** ServerProcess is `shaker serve` started as an operator would, in its own process. */
export interface ServerProcess {
  proc: ChildProcess;
  url: string;
  output: () => string;
}

/** startServerProcess runs `node bin/shaker.js serve` on a free port and waits for its banner. */
export function startServerProcess(env: Record<string, string>): Promise<ServerProcess> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ["bin/shaker.js", "serve"], {
      env: { ...process.env, PORT: "0", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${out}`)), 60_000);
    const onData = (b: Buffer) => {
      out += b.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, url: m[1], output: () => out });
      }
    };
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", (b: Buffer) => (out += b.toString()));
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${out}`));
    });
  });
}

/** stopServerProcess kills the server with a signal and waits until it is gone. */
export function stopServerProcess(server: ServerProcess, signal: NodeJS.Signals): Promise<number | null> {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null) return resolve(server.proc.exitCode);
    server.proc.once("exit", (code) => resolve(code));
    server.proc.kill(signal);
  });
}
