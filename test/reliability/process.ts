import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

/** repoDir is the checkout these tests run from (CI clones it elsewhere than developers do). */
export const repoDir = fileURLToPath(new URL("../../", import.meta.url));

/** ServerProcess is `shaker serve` started as an operator would, in its own process. */
export interface ServerProcess {
  proc: ChildProcess;
  url: string;
  output: () => string;
}

/** Options of startServerProcess. */
export interface ServerProcessOptions {
  /** user runs the server as this (system) user, without root's groups or capabilities (see systemUser). */
  user?: SystemUser;
  /** wrap is a command the server is started through (it must exec its arguments). */
  wrap?: string[];
}

/**
 * startServerProcess runs `node bin/shaker.js serve` on a free port and waits for its banner. With
 * `user`, through `setpriv`, which execs: the child's pid is the server's.
 */
export function startServerProcess(env: Record<string, string>, options: ServerProcessOptions = {}): Promise<ServerProcess> {
  return new Promise((resolve, reject) => {
    const serve = [process.execPath, `${repoDir}bin/shaker.js`, "serve"];
    const asUser = options.user
      ? ["setpriv", `--reuid=${options.user.uid}`, `--regid=${options.user.gid}`, "--clear-groups", "--", ...serve]
      : serve;
    const [command, ...args] = [...(options.wrap ?? []), ...asUser];
    const proc = spawn(command, args, {
      cwd: repoDir,
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
    proc.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`could not start ${command}: ${e.message}`));
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${out}`));
    });
  });
}

/** stopServerProcess kills the server with a signal and waits until it is gone. */
export function stopServerProcess(server: ServerProcess, signal: NodeJS.Signals): Promise<number | null> {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null || server.proc.signalCode !== null) return resolve(server.proc.exitCode);
    server.proc.once("exit", (code) => resolve(code));
    server.proc.kill(signal);
  });
}

/** SystemUser is an unprivileged account to run a server as. */
export interface SystemUser {
  name: string;
  uid: number;
  gid: number;
}

/**
 * systemUser returns the system user `name`, creating it (no home, no login) when it is missing.
 * Needs root; throws saying why when the user can neither be found nor made, or cannot read the
 * checkout (the server runs from it).
 */
export function systemUser(name: string): SystemUser {
  const lookup = () => {
    const r = spawnSync("getent", ["passwd", name], { encoding: "utf8" });
    if (r.status !== 0) return undefined;
    const [, , uid, gid] = r.stdout.trim().split(":");
    return { name, uid: Number(uid), gid: Number(gid) };
  };
  let user = lookup();
  if (!user) {
    if (process.getuid?.() !== 0)
      throw new Error(`no user ${name}, and only root can create one (these tests run as uid ${process.getuid?.()})`);
    const made = spawnSync("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], { encoding: "utf8" });
    user = lookup();
    if (!user)
      throw new Error(`could not create the user ${name}: useradd exited with ${made.status}: ${made.stderr || made.error?.message}`);
  }
  const check = spawnSync(
    "setpriv",
    [`--reuid=${user.uid}`, `--regid=${user.gid}`, "--clear-groups", "--", "test", "-r", `${repoDir}bin/shaker.js`],
    { encoding: "utf8" },
  );
  if (check.status !== 0) {
    throw new Error(
      `the user ${name} cannot read ${repoDir}bin/shaker.js (${check.error?.message ?? `exit ${check.status} ${check.stderr}`}): every directory up to the checkout must be readable and searchable by others`,
    );
  }
  return user;
}

/** freePort is a TCP port nothing listens on now: for a server that must come back on the same port. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}
