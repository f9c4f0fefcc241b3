import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** SandboxMode chooses how workers are confined: `auto` uses bwrap where it works. */
export type SandboxMode = "auto" | "bwrap" | "none";

/** Isolation is what confines the Python workers and their runs on this host. */
export interface Isolation {
  /** prefix is prepended to the worker's command line (the bwrap invocation), or empty. */
  prefix: string[];
  /** pidsCgroup is a pids-controller cgroup each run's process makes its own group in (and the worker removes), or undefined. */
  pidsCgroup: string | undefined;
  /** summary says in one line what isolation runs get, for the start-up banner and the docs. */
  summary: string;
  close(): void;
}

/** Options of prepareIsolation. */
export interface IsolationOptions {
  mode: SandboxMode;
  /** dataDir is hidden from runs (an empty tmpfs over it). */
  dataDir: string;
  /** processesPerRun caps the processes (and threads) of one run; 0 for no cap. */
  processesPerRun: number;
  /** readable are paths runs must still read (the harness), bound back when /tmp or /var/tmp hide them. */
  readable: string[];
  /** probe is a command that must succeed inside the sandbox (the worker's imports) for it to be used. */
  probe: string[];
}

/** The pids controller's mount: cgroup v1's own hierarchy, or v2's unified one when it offers pids. */
function pidsControllerRoot(): string | undefined {
  if (existsSync("/sys/fs/cgroup/pids/cgroup.procs")) return "/sys/fs/cgroup/pids";
  try {
    if (readFileSync("/sys/fs/cgroup/cgroup.subtree_control", "utf8").split(/\s+/).includes("pids")) return "/sys/fs/cgroup";
  } catch {
    // no cgroup v2 there
  }
  return undefined;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** removeStaleGroups removes the (empty) groups of Shaker servers that are no longer running. */
function removeStaleGroups(root: string): void {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^shaker-(\d+)$/.exec(name);
    if (!m || alive(Number(m[1]))) continue;
    const dir = join(root, name);
    try {
      for (const run of readdirSync(dir, { withFileTypes: true })) if (run.isDirectory()) rmdirSync(join(dir, run.name));
      rmdirSync(dir);
    } catch {
      // still busy: a later start tries again
    }
  }
}

/** preparePidsCgroup makes this server's pids cgroup, or returns undefined where cgroups are not writable. */
function preparePidsCgroup(processesPerRun: number): string | undefined {
  if (processesPerRun <= 0) return undefined;
  const root = pidsControllerRoot();
  if (!root) return undefined;
  removeStaleGroups(root);
  const dir = join(root, `shaker-${process.pid}`);
  try {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "pids.max"), "max");
    return dir;
  } catch {
    return undefined;
  }
}

function bwrapArgs(dataDir: string, pidsCgroup: string | undefined, readable: string[]): string[] {
  const args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"];
  // A checkout under /tmp (CI clones often are) would vanish under the private /tmp: bind it back.
  for (const path of readable) args.push("--ro-bind", path, path);
  // Last, so no bind above can bring the data directory back into view.
  args.push("--tmpfs", dataDir);
  if (pidsCgroup) args.push("--bind", pidsCgroup, pidsCgroup);
  args.push("--unshare-ipc", "--unshare-uts", "--die-with-parent");
  return args;
}

function bwrapWorks(args: string[], probe: string[]): boolean {
  const result = spawnSync(args[0], [...args.slice(1), ...probe], { stdio: "ignore", timeout: 20_000 });
  return result.status === 0;
}

/**
 * prepareIsolation decides, once at start, how runs are confined here: bubblewrap (read-only root,
 * private /tmp, the data directory hidden) when installed and working, and a pids cgroup per run
 * (fork bombs stop at the cap) where the pids controller is writable. Throws when `bwrap` is
 * demanded and does not work.
 */
export function prepareIsolation(options: IsolationOptions): Isolation {
  mkdirSync(options.dataDir, { recursive: true });
  const pidsCgroup = preparePidsCgroup(options.processesPerRun);
  let prefix: string[] = [];
  if (options.mode !== "none") {
    const args = bwrapArgs(options.dataDir, pidsCgroup, options.readable);
    if (bwrapWorks(args, options.probe)) prefix = args;
    else if (options.mode === "bwrap") {
      throw new Error("SHAKER_SANDBOX=bwrap, but bubblewrap is not installed or cannot create its namespaces here");
    }
  }
  const parts = [
    prefix.length > 0
      ? "bwrap sandbox (read-only root, private /tmp, data directory hidden)"
      : "no sandbox (install bubblewrap for a read-only root and a private /tmp)",
    pidsCgroup ? `at most ${options.processesPerRun} processes per run (pids cgroup)` : "no process cap per run (no writable pids cgroup)",
    "a fresh process, private TMPDIR and resource limits per run",
  ];
  return {
    prefix,
    pidsCgroup,
    summary: parts.join("; "),
    close() {
      if (!pidsCgroup) return;
      try {
        rmdirSync(pidsCgroup);
      } catch {
        // runs still exiting keep it busy; the next start uses its own
      }
    },
  };
}
