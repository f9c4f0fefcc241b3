import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** SandboxMode chooses whether runs are confined: `auto` confines them wherever the kernel allows. */
export type SandboxMode = "auto" | "none";

/** Isolation is how runs are confined on this host, decided once at start. */
export interface Isolation {
  /** confined is true when every run gets the whole confinement (docs/security.md). */
  confined: boolean;
  /** socketPath is the host path of the Unix socket runs reach the services through. */
  socketPath: string;
  /** rpcUrl is the services' address as a run sees it. */
  rpcUrl: string;
  /** workerEnv is the environment that tells worker number `slot` how to confine its runs. */
  workerEnv(slot: number): Record<string, string>;
  /** summary says in one line what runs get here, for the start-up banner. */
  summary: string;
  /** why says, when runs are not confined, what the kernel refused (empty otherwise). */
  why: string;
  close(): void;
}

/** Options of prepareIsolation. */
export interface IsolationOptions {
  mode: SandboxMode;
  /** python is the interpreter the workers run; its installation is bound into the runs' root. */
  python: string;
  /** harnessDir is the Python package's directory, bound read-only into the runs' root. */
  harnessDir: string;
  /** dataDir is never visible to runs. */
  dataDir: string;
  /** processesPerRun caps the processes (and threads) of one run; 0 for no cap. */
  processesPerRun: number;
  /** memoryBytesPerRun caps the memory of a whole run (its processes and its /tmp) where a memory cgroup is writable; 0 for no cap. */
  memoryBytesPerRun: number;
  /** tmpBytesPerRun is the size of each run's private /tmp. */
  tmpBytesPerRun: number;
  /** readPaths are further host paths runs may read (bound read-only), beyond the system's and Python's. */
  readPaths: string[];
}

/** The host's directories a run reads: programs, libraries and configuration (CA bundles, time zones). */
const systemPaths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"];
/** Where a confined run finds the services' socket. */
const runSocketDir = "/run/shaker";

interface CgroupPlan {
  dir: string;
  limits: Record<string, string>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** removeGroup removes a server's cgroup directory and its runs' (empty) groups. */
function removeGroup(dir: string): void {
  try {
    for (const run of readdirSync(dir, { withFileTypes: true })) if (run.isDirectory()) rmdirSync(join(dir, run.name));
    rmdirSync(dir);
  } catch {
    // still busy (runs still exiting): the next start removes it
  }
}

/** removeStaleSocketDirs removes the socket directories of Shaker servers that were killed before they could. */
function removeStaleSocketDirs(): void {
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^shaker-rpc-(\d+)-/.exec(name);
    if (m && !alive(Number(m[1]))) rmSync(join(tmpdir(), name), { recursive: true, force: true });
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
    if (m && !alive(Number(m[1]))) removeGroup(join(root, name));
  }
}

/**
 * prepareCgroups makes this server's directory in each controller it can write (cgroup v1: pids,
 * memory, cpu; v2: one directory with those controllers enabled), with the limits each run's group
 * there gets. The fork servers put every child into a group of its own under each.
 */
function prepareCgroups(options: IsolationOptions): CgroupPlan[] {
  const name = `shaker-${process.pid}`;
  const wanted: [string, Record<string, string>][] = [
    ["pids", options.processesPerRun > 0 ? { "pids.max": String(options.processesPerRun) } : {}],
    ["memory", options.memoryBytesPerRun > 0 ? { "memory.limit_in_bytes": String(options.memoryBytesPerRun) } : {}],
    ["cpu", {}], // a group of its own gives each run an equal CPU weight, however many processes it has
  ];
  const plans: CgroupPlan[] = [];
  if (existsSync("/sys/fs/cgroup/pids/cgroup.procs") || existsSync("/sys/fs/cgroup/memory/cgroup.procs")) {
    for (const [controller, limits] of wanted) {
      const root = `/sys/fs/cgroup/${controller}`;
      if (!existsSync(join(root, "cgroup.procs"))) continue;
      removeStaleGroups(root);
      try {
        mkdirSync(join(root, name), { recursive: true });
        plans.push({ dir: join(root, name), limits });
      } catch {
        // not writable (not root, no delegation): runs go without this controller
      }
    }
    return plans;
  }
  try {
    const available = readFileSync("/sys/fs/cgroup/cgroup.subtree_control", "utf8").split(/\s+/);
    const controllers = ["pids", "memory", "cpu"].filter((c) => available.includes(c));
    if (controllers.length === 0) return plans;
    removeStaleGroups("/sys/fs/cgroup");
    const dir = join("/sys/fs/cgroup", name);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "cgroup.subtree_control"), controllers.map((c) => `+${c}`).join(" "));
    const limits: Record<string, string> = {};
    if (controllers.includes("pids") && options.processesPerRun > 0) limits["pids.max"] = String(options.processesPerRun);
    if (controllers.includes("memory") && options.memoryBytesPerRun > 0) limits["memory.max"] = String(options.memoryBytesPerRun);
    plans.push({ dir, limits });
  } catch {
    // no cgroup v2 we may write
  }
  return plans;
}

interface ProbeReport {
  confined: boolean;
  as_root: boolean;
  landlock_abi: number;
  error: string;
  binds: string[];
}

/** probe tries the whole confinement once, in a throwaway process tree (harness/shaker/sandbox.py). */
function probe(options: IsolationOptions, confinement: Record<string, unknown>): ProbeReport {
  const result = spawnSync(options.python, ["-B", "-s", "-m", "shaker.sandbox"], {
    cwd: options.harnessDir,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", PYTHONPATH: options.harnessDir, SHAKER_CONFINEMENT: JSON.stringify(confinement) },
    encoding: "utf8",
    timeout: 20_000,
  });
  try {
    return JSON.parse(result.stdout) as ProbeReport;
  } catch {
    const why = (result.stderr || result.error?.message || `exit ${result.status}`).trim().split("\n").pop();
    return { confined: false, as_root: process.getuid?.() === 0, landlock_abi: 0, error: `the probe failed: ${why}`, binds: [] };
  }
}

/**
 * prepareIsolation decides, once at start, how runs are confined here. With `auto`, each run gets
 * the kernel's confinement (namespaces, its own uid or user namespace, no capabilities, seccomp,
 * Landlock, a read-only root without the data directory, a private /tmp, no network) when the probe
 * shows every part of it works; otherwise `confined` is false and `why` says what failed, and the
 * Executor refuses runs of accounts other than admins'. `none` confines nothing, knowingly.
 */
export function prepareIsolation(options: IsolationOptions): Isolation {
  mkdirSync(options.dataDir, { recursive: true });
  // The data directory is the server's alone, whoever else can reach its parent.
  try {
    chmodSync(options.dataDir, 0o700);
  } catch {
    // not ours to change (a mount point): the mount view still hides it from runs
  }
  removeStaleSocketDirs();
  const socketDir = mkdtempSync(join(tmpdir(), `shaker-rpc-${process.pid}-`));
  chmodSync(socketDir, 0o755);
  const socketPath = join(socketDir, "services.sock");
  const cgroups = prepareCgroups(options);
  const confinement = {
    enabled: options.mode !== "none",
    binds: [...systemPaths, options.harnessDir, ...options.readPaths],
    socket_dir: socketDir,
    hidden: [options.dataDir],
    tmp_bytes: options.tmpBytesPerRun,
    max_processes: options.processesPerRun,
  };
  let report: ProbeReport | undefined;
  if (options.mode !== "none") report = probe(options, confinement);
  const confined = report?.confined === true;
  const why = options.mode === "none" ? "SHAKER_SANDBOX=none" : confined ? "" : (report?.error ?? "");
  const controllers = cgroups.map((c) => c.dir.split("/").at(-2)).join(", ");
  const summary = confined
    ? [
        `confined by the kernel (${report!.as_root ? "a uid of its own" : "a user namespace of its own"} per run, PID/mount/IPC/UTS namespaces, no network, no capabilities, seccomp, ${report!.landlock_abi > 0 ? `Landlock ABI ${report!.landlock_abi}` : "no Landlock"}, read-only root without the data directory, ${Math.round(options.tmpBytesPerRun / 1048576)} MiB private /tmp)`,
        cgroups.length > 0
          ? `cgroups per run: ${controllers}`
          : "no writable cgroups: no memory cap for a whole run (RLIMIT_NPROC caps its processes)",
      ].join("; ")
    : options.mode === "none"
      ? "NOT confined (SHAKER_SANDBOX=none): every account's runs can read and write what the server can"
      : `NOT confined (${why}): runs of accounts other than admins' are refused; set SHAKER_SANDBOX=none to run them unconfined`;
  return {
    confined,
    socketPath,
    rpcUrl: confined ? `unix:${runSocketDir}/services.sock` : `unix:${socketPath}`,
    why,
    summary,
    workerEnv(slot) {
      const env: Record<string, string> = { SHAKER_CGROUPS: JSON.stringify(cgroups) };
      if (confined) env.SHAKER_CONFINEMENT = JSON.stringify({ ...confinement, worker_slot: slot });
      return env;
    },
    close() {
      // The fork servers remove their slots' groups as they exit; one that was killed could not.
      for (const { dir } of cgroups) removeGroup(dir);
      rmSync(socketDir, { recursive: true, force: true });
    },
  };
}
