// Attacks from inside a run: account B uploads ordinary workflows that attack account A, the server
// and the host, while A runs a victim workflow that holds a per-invocation secret and a live run
// token. Every attack must fail, and A's runs must stay correct: the victim returns its own output
// (computed from its untouched secret) and A's other workflow keeps answering with A's output.
//
// The contract checked (from the attacker's side) is how runs are confined:
// - each run is its own principal: as a root server its own unprivileged uid (distinct among live
//   runs, never 0); as a non-root server its own user namespace. No capabilities, no_new_privs, a
//   seccomp filter denying ptrace, process_vm_readv, mount, umount2, unshare, setns, keyctl, bpf;
// - its own PID namespace (it is pid 1 and sees only its own processes), its own mount view (a
//   read-only root, no data directory, a private size-limited /tmp, a read-only harness), its own
//   cgroup (process and memory caps it cannot leave; everything it started dies with it), no network
//   (only ctx, over a Unix socket; ctx.http refuses loopback, link-local and private addresses);
// - the worker protocol treats a run as hostile: bytes it writes to its descriptors neither end it
//   early nor name another process to kill nor touch another run.
//
// Attacks 1-14 are in test/reliability/attacks/*.py, each uploaded with attacks/common.py before it.
// Each attack reports every step it tried as an "attempt" ({what, ok, detail}, ok meaning the step
// worked) and emits it at once, so a run killed midway still leaves its report.
//
// Host pids: the test finds the host pid of a run that must be found (the victim, the identity
// probes) by the file the run keeps open in its TMPDIR, named after a marker (/proc/<pid>/fd/*).
// Attacks aimed at the server's processes get the pids of the server's process tree (the server
// and its descendants, the Python ones where only those make sense), as the host sees them; this
// assumes runs, workers and fork servers stay descendants of the server process.
//
// Settings (describe.each): the server as root, and the server as the unprivileged system user
// shaker-test (created when missing, through setpriv; its data directory and HOME are its own, its
// Python /usr/bin/python3). Both are `node bin/shaker.js serve` child processes with SHAKER_SANDBOX=auto,
// SHAKER_RUN_MEMORY_BYTES=512 MiB and SHAKER_RUN_MAX_PROCESSES=64, a fresh one for every test so an
// attack that breaks a server breaks only its own test. No timing decides a result: the waits are
// hang detectors only.
import { createHash, randomBytes } from "node:crypto";
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { RegistryService } from "../../gen/shaker/registry/v1/registry_pb.js";
import { alive, parentPids } from "../helpers.js";
import { repoDir, type ServerProcess, startServerProcess, stopServerProcess, systemUser } from "./process.js";

const MiB = 1024 * 1024;
const memoryBytes = 512 * MiB;
const maxProcesses = 64;
/** A step that takes longer than this has hung (on 2 busy cores, nothing legitimate comes close). */
const hang = 90_000;
const testTimeout = 240_000;

const attacksDir = fileURLToPath(new URL("./attacks/", import.meta.url));
const harnessDir = join(repoDir, "services/executor/harness");
const common = readFileSync(join(attacksDir, "common.py"), "utf8");
const script = (file: string) => `${common}\n\n${readFileSync(join(attacksDir, file), "utf8")}`;
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Setting {
  name: string;
  /** user runs the server as this unprivileged system user; undefined: as root. */
  user?: string;
}

const settings: Setting[] = [
  { name: "server as root" },
  // Creating and switching to the user needs root, which these machines and CI always have.
  ...(process.getuid?.() === 0 ? [{ name: "server as the unprivileged user shaker-test", user: "shaker-test" }] : []),
];

/** Env is one test's server, its two accounts and what the attacks are told. */
interface Env {
  server: ServerProcess;
  url: string;
  port: number;
  /** pid is the server's host pid. */
  pid: number;
  dataDir: string;
  /** home is the server's HOME, and so its runs'. */
  home: string;
  madeDirs: string[];
  adminKey: string;
  aKey: string;
  bKey: string;
  /** aMark is in the source of A's echo workflow (and so in the Registry's SQLite file). */
  aMark: string;
  aEchoVersionId: string;
  secret: string;
  uploaded: Set<string>;
}

interface Attempt {
  what: string;
  ok: boolean;
  detail: string;
}

/** Stream is a streamed invocation being read: its run id at once, its emitted values as they come. */
interface Stream {
  runId: string;
  key: string;
  emitted: any[];
  final: any;
  error: any;
  ended: boolean;
  done: Promise<void>;
  waitEmitted(match: (e: any) => boolean, what: string, ms?: number): Promise<any>;
}

/** Outcome is how a run ended, as its record and its stream show it. */
interface Outcome {
  runId: string;
  status: string;
  output: any;
  error: any;
  emitted: any[];
  attempts: Attempt[];
  /** text is everything B could see of its run: the record and the stream. */
  text: string;
}

describe.each(settings.map((s) => [s.name, s] as const))("attacks from a run, %s", (_name, setting) => {
  let env: Env;

  beforeEach(async () => {
    env = await startEnv(setting);
  });

  afterEach(async () => {
    if (env) await closeEnv(env);
  });

  // -- the attacks --------------------------------------------------------------------------------

  it(
    "1. a run cannot read the server's SQLite files, nor any file under the data directory",
    async () => {
      const victim = await startVictim();
      const o = await outcome(await attack("01_data_dir.py", { data_dir: env.dataDir }));
      expectAttackFailed(o);
      await finishVictim(victim);
      await aEchoes(4);
    },
    testTimeout,
  );

  it(
    "2. a run cannot read the server's /proc/<pid>/environ, /proc/<pid>/root or /proc/<pid>/fd/*",
    async () => {
      const victim = await startVictim();
      const o = await outcome(await attack("02_server_proc.py", { server_pid: env.pid, data_dir: env.dataDir }));
      expectAttackFailed(o);
      await finishVictim(victim);
      await aEchoes(4);
    },
    testTimeout,
  );

  it(
    "3. a run cannot read the victim run's memory or environment (/proc/<pid>/mem, environ, process_vm_readv, ptrace), nor the workers'",
    async () => {
      const victim = await startVictim();
      const python = pythonTree().filter((p) => p !== victim.hostPid);
      const o = await outcome(await attack("03_victim_memory.py", { victim_pid: victim.hostPid, python_pids: python }));
      expectAttackFailed(o);
      await finishVictim(victim);
      await aEchoes(4);
    },
    testTimeout,
  );

  it(
    "4. a run cannot write into the pipes of the server, its workers, fork servers or other runs through /proc/<pid>/fd",
    async () => {
      const victim = await startVictim();
      const pids = [...new Set([...serverTree(), victim.hostPid])];
      const o = await outcome(await attack("04_pipes.py", { pids, a_version_id: env.aEchoVersionId, victim_run_id: victim.stream.runId }));
      expectAttackFailed(o);
      await finishVictim(victim);
      // One at a time, so the spares forked after the attack (which would inherit injected code) run too.
      await aEchoes(8, 1);
    },
    testTimeout,
  );

  it(
    "5. a run cannot change the harness on disk, nor kill the workers or fork servers",
    async () => {
      const before = snapshot(harnessDir);
      const victim = await startVictim();
      const files = readdirSync(join(harnessDir, "shaker"))
        .filter((f) => f.endsWith(".py"))
        .map((f) => join(harnessDir, "shaker", f));
      const keepers = workersAndForkServers();
      expect(keepers.length, "workers and fork servers found in the server's process tree").toBeGreaterThan(0);
      const marker = randomBytes(6).toString("hex");
      try {
        const targets = pythonTree().filter((p) => p !== victim.hostPid);
        const o = await outcome(await attack("05_harness.py", { harness_dir: harnessDir, files, pids: targets, marker }));
        expectAttackFailed(o);
        expect
          .soft(
            keepers.filter((p) => !alive(p)),
            "workers or fork servers the attack killed",
          )
          .toEqual([]);
        expect.soft(snapshot(harnessDir), "the harness after the attack").toEqual(before);
        await finishVictim(victim);
        await aEchoes(8, 1);
      } finally {
        rmSync(join(harnessDir, "shaker", `zz_attack_${marker}.py`), { force: true });
      }
    },
    testTimeout,
  );

  it(
    "6. forged protocol frames on fds 3 and 4, stdout and stderr neither end a run as they claim nor redirect its kill to the victim",
    async () => {
      const victim = await startVictim();
      // A run that claims the victim's process as its own. If it is still running, it is cancelled:
      // the kill must hit the run itself, never the victim.
      const claim = await attack("06_forged_frames.py", { victim_pid: victim.hostPid, mode: "claim" });
      const armedOrOver = await waitUntil(() => claim.ended || claim.emitted.includes("armed"), hang);
      expect(armedOrOver, "the claiming run either went on or was ended for its frames").toBe(true);
      if (!claim.ended) {
        const cancel = await call(env.bKey, "POST", `/v1/runs/${claim.runId}/cancel`);
        expect.soft(cancel.status, `cancel: ${cancel.text}`).toBe(200);
        const ended = await waitUntil(async () => !["running", "queued"].includes((await runRecord(env.bKey, claim.runId)).status), 20_000);
        expect.soft(ended, "the cancelled claiming run ended (its kill reached its own process)").toBe(true);
      }
      expect.soft(alive(victim.hostPid), "the victim's process after the run claiming it ended").toBe(true);
      // A run that forges an exit, its pid and broken results, then sleeps 2 s and returns "done": it
      // is reported as what it really did, either returning "done" (the frames ignored) or failing for
      // breaking the protocol (the frames refused), never as ended by its forged exit or result.
      const o = await outcome(await attack("06_forged_frames.py", { victim_pid: victim.hostPid, mode: "garbage" }));
      const reported =
        o.status === "succeeded" ? `succeeded with ${JSON.stringify(o.output)}` : `${o.status}: ${o.error?.type}: ${o.error?.message}`;
      expect.soft(reported, "the forging run's outcome").toMatch(/^succeeded with "done"$|^failed: .*protocol/i);
      // The same bytes on stdout, stderr and fd 3 are no frames at all: the run goes on to return "done".
      const quiet = await outcome(await attack("06_forged_frames.py", { victim_pid: victim.hostPid, mode: "stdout" }));
      expect.soft(quiet.status, `frames written to stdout, stderr and fd 3: ${JSON.stringify(quiet.error)}`).toBe("succeeded");
      expect.soft(quiet.output, "frames written to stdout, stderr and fd 3").toBe("done");
      expect.soft(alive(victim.hostPid), "the victim's process after the forged frames").toBe(true);
      await finishVictim(victim);
      await aEchoes(4);
    },
    testTimeout,
  );

  it(
    "7. a run cannot leave its cgroup or lift its caps, and its forks stop at the process cap while the server stays responsive",
    async () => {
      const victim = await startVictim();
      const bomb = await attack("07_process_cap.py", { count: 400, hold_seconds: 4 });
      const forked = await bomb.waitEmitted((e) => typeof e?.forked === "number", "the fork count");
      // While the forks are held: the server answers, and A's runs succeed.
      expect((await call(env.aKey, "GET", "/healthz")).status).toBe(200);
      await aEchoes(10);
      const o = await outcome(bomb);
      expect.soft(breaches(o), "cgroup writes that worked").toEqual([]);
      expect.soft(forked.forked, `processes forked beyond the run's cap of ${maxProcesses} (its own included)`).toBeLessThan(maxProcesses);
      expect.soft(forked.forked, "forks work at all inside a run (below the cap)").toBeGreaterThan(0);
      expect.soft(o.status, `the run: ${JSON.stringify(o.error)}`).toBe("succeeded");
      await finishVictim(victim);
      await aEchoes(4);
    },
    testTimeout,
  );

  it(
    "8. a setsid daemon (double fork, exec sleep 987654) does not outlive its run",
    async () => {
      killDaemons();
      try {
        const victim = await startVictim();
        const o = await outcome(await attack("08_daemon.py", {}));
        expect(o.status, `the run: ${JSON.stringify(o.error)}`).toBe("succeeded");
        expect(o.output.daemon_seen, "the daemon was started inside the run").toBe(true);
        // The run is over: give the kill a moment, then nothing of it may be left on the host.
        await waitUntil(() => daemons().length === 0, 5_000);
        expect.soft(daemons().map(describeProcess), "processes left by the run after it ended").toEqual([]);
        await finishVictim(victim);
        await aEchoes(4);
      } finally {
        killDaemons();
      }
    },
    testTimeout,
  );

  it(
    "9. memory beyond SHAKER_RUN_MEMORY_BYTES (512 MiB) fails the run, and the host is fine",
    async () => {
      // As root, the cap is for the whole run (a memory cgroup): 8 processes of 200 MiB each (1.6 GiB)
      // exceed it. A non-root server has no cgroup to write, and the contract gives its runs a cap per
      // process only: 8 processes of 600 MiB each exceed that.
      const mib = setting.user ? 600 : 200;
      const victim = await startVictim();
      const o = await outcome(await attack("09_memory.py", { processes: 8, mib }));
      const held = o.emitted.find((e) => typeof e?.held === "number")?.held ?? o.output?.held ?? 0;
      expect.soft(held, `processes that held ${mib} MiB at once in a run capped at 512 MiB`).toBeLessThan(8);
      expect.soft(o.status, `the run is failed (killed or MemoryError): ${JSON.stringify(o.error)}`).toBe("failed");
      expect((await call(env.aKey, "GET", "/healthz")).status).toBe(200);
      await finishVictim(victim);
      await aEchoes(4);
    },
    testTimeout,
  );

  it(
    "10. a run cannot fill the disk beyond its /tmp size nor leave files anywhere on the host",
    async () => {
      const victim = await startVictim();
      const marker = randomBytes(6).toString("hex");
      const name = `shaker-attack-${marker}`;
      const places = [
        "/",
        "/dev/shm",
        "/var/tmp",
        "/run",
        "/run/lock",
        "/var/lib",
        "/tmp",
        env.home,
        env.dataDir,
        process.env.HOME ?? "/root",
      ];
      try {
        const o = await outcome(await attack("10_files.py", { marker, big_mib: 500, home: env.home, data_dir: env.dataDir }));
        const fills: { dir: string; written: number; error: string }[] = o.emitted.filter((e) => e?.filled).map((e) => e.filled);
        expect(fills.length, `the run reported its writes: ${JSON.stringify(o.error)}`).toBeGreaterThanOrEqual(2);
        expect.soft(fills[0].written, `bytes written into $TMPDIR (${fills[0].dir}, ${fills[0].error})`).toBeLessThan(500 * MiB);
        expect.soft(fills[1].written, `bytes written into /tmp (${fills[1].error})`).toBeLessThan(500 * MiB);
        const tmpdir = o.output?.tmpdir ?? fills[0].dir;
        const left = () => leftovers(name, [...places, tmpdir]);
        await waitUntil(() => left().length === 0, 5_000);
        expect.soft(left(), "what the run wrote that is still on the host after it ended").toEqual([]);
        await finishVictim(victim);
        await aEchoes(4);
      } finally {
        for (const path of leftovers(name, places)) rmSync(path, { recursive: true, force: true });
      }
    },
    testTimeout,
  );

  it(
    "11. a run cannot unmount /tmp, mount, or make or join mount namespaces; A's next 20 runs succeed",
    async () => {
      const victim = await startVictim();
      const o = await outcome(await attack("11_mounts.py", { host_mnt_ns: readlinkSync("/proc/self/ns/mnt") }));
      expectAttackFailed(o);
      await aEchoes(20, 5);
      await finishVictim(victim);
    },
    testTimeout,
  );

  it(
    "12. one 48 MiB ctx.emit is delivered intact or refused clearly, while 20 of A's runs succeed",
    async () => {
      const victim = await startVictim();
      const big = await attack("12_huge_emit.py", { mib: 48 });
      await aEchoes(20);
      const o = await outcome(big);
      if (o.status === "succeeded" && o.output?.outcome === "emitted") {
        const value = big.emitted.find((e) => typeof e === "string" && e.length > MiB);
        expect(value, "an emit that did not raise reached the streaming caller").toBeDefined();
        expect(value.length).toBe(48 * MiB);
        expect(sha256(value), "the 48 MiB value arrived intact").toBe(o.output.sha);
      } else {
        const message = o.status === "succeeded" ? o.output?.outcome : `${o.error?.type}: ${o.error?.message}`;
        expect(message, "a refused emit says why").toMatch(/too (large|big)|limit|exceed|size|bytes|MiB/i);
      }
      await finishVictim(victim);
    },
    testTimeout,
  );

  it(
    "13. a run has no network: raw connections to the server, PostgreSQL, the host's addresses and 169.254.169.254 fail, and ctx.http refuses loopback and link-local",
    async () => {
      const victim = await startVictim();
      let connections = 0;
      const trap: Server = createServer((socket) => {
        connections++;
        socket.destroy();
      });
      await new Promise<void>((resolve) => trap.listen({ host: "::", port: 0 }, resolve));
      try {
        const trapPort = (trap.address() as { port: number }).port;
        const hostAddrs = Object.values(networkInterfaces())
          .flat()
          .filter((a) => a && !a.internal && !a.address.toLowerCase().startsWith("fe80"))
          .map((a) => a!.address);
        const o = await outcome(await attack("13_network.py", { server_port: env.port, trap_port: trapPort, host_addrs: hostAddrs }));
        expectAttackFailed(o);
        expect.soft(connections, "connections that reached the test's listener").toBe(0);
        expect.soft(o.output?.interfaces, "the network interfaces a run sees").toEqual(["lo"]);
        expect.soft(o.output?.up, "loopback is down").toEqual({ lo: false });
      } finally {
        trap.close();
      }
      await finishVictim(victim);
      await aEchoes(4);
    },
    testTimeout,
  );

  it(
    "14. a run is its own principal: its own uid or user namespace, no capabilities, no_new_privs, seccomp, pid 1, only its own /proc",
    async () => {
      const victim = await startVictim();
      const markers = [`probe-${randomBytes(6).toString("hex")}`, `probe-${randomBytes(6).toString("hex")}`];
      const streams = await Promise.all(markers.map((marker) => attack("14_identity.py", { marker })));
      const infos = await Promise.all(streams.map((s, i) => s.waitEmitted((e) => e?.marker === markers[i], "the identity probe")));
      const hostPids = await Promise.all(markers.map(findHostPid));
      for (const info of infos) {
        const who = `probe ${info.marker}`;
        expect.soft(BigInt(`0x${info.cap_eff ?? "ff"}`), `${who}: CapEff`).toBe(0n);
        expect.soft(info.no_new_privs, `${who}: NoNewPrivs`).toBe("1");
        expect.soft(info.seccomp, `${who}: Seccomp`).toBe("2");
        expect.soft(info.pid, `${who}: os.getpid()`).toBe(1);
        expect.soft(info.proc_pids, `${who}: the pids its /proc lists`).toEqual([info.pid]);
        const allowed = Object.entries(info.syscalls as Record<string, { denied: boolean; detail: string }>)
          .filter(([, r]) => !r.denied)
          .map(([name, r]) => `${name}: ${r.detail}`);
        expect.soft(allowed, `${who}: syscalls the seccomp filter let through`).toEqual([]);
      }
      const runs = [victim.hostPid, ...hostPids];
      if (!setting.user) {
        const uids = runs.map(hostUid);
        expect.soft(uids.filter((u) => u === 0).length, `host uids of three live runs (${uids}): none is root`).toBe(0);
        expect.soft(new Set(uids).size, `host uids of three live runs (${uids}): all different`).toBe(3);
        for (const info of infos) expect.soft(info.uid, `probe ${info.marker}: the uid it sees`).not.toBe(0);
      } else {
        const serverNs = readlinkSync(`/proc/${env.pid}/ns/user`);
        const ns = runs.map((p) => readlinkSync(`/proc/${p}/ns/user`));
        expect
          .soft(ns.filter((n) => n === serverNs).length, `user namespaces of three live runs (${ns}) vs the server's (${serverNs})`)
          .toBe(0);
        expect.soft(new Set(ns).size, `user namespaces of three live runs (${ns}): all different`).toBe(3);
      }
      for (const marker of markers) await release(env.bKey, marker);
      for (const s of streams) {
        const o = await outcome(s);
        expect.soft(o.status, `the probe: ${JSON.stringify(o.error)}`).toBe("succeeded");
      }
      await finishVictim(victim);
    },
    testTimeout,
  );

  // -- the server, the accounts and the victim -------------------------------------------------------

  async function startEnv(setting: Setting): Promise<Env> {
    if (!setting.user && process.getuid?.() !== 0) {
      throw new Error(`the root-server setting needs these tests to run as root; they run as uid ${process.getuid?.()}`);
    }
    const user = setting.user ? systemUser(setting.user) : undefined;
    const madeDirs: string[] = [];
    const dataDir = mkdtempSync(join(tmpdir(), "shaker-attacks-data-"));
    madeDirs.push(dataDir);
    const adminKey = `sk-shaker-attacks-admin-${randomBytes(12).toString("hex")}`;
    const serverEnv: Record<string, string> = {
      SHAKER_DATA_DIR: dataDir,
      SHAKER_API_KEY: adminKey,
      SHAKER_SANDBOX: "auto",
      SHAKER_RUN_MEMORY_BYTES: String(memoryBytes),
      SHAKER_RUN_MAX_PROCESSES: String(maxProcesses),
    };
    let home = process.env.HOME ?? "/root";
    if (user) {
      // The user cannot read /root: its own HOME, data directory and the system Python.
      home = mkdtempSync(join(tmpdir(), "shaker-attacks-home-"));
      madeDirs.push(home);
      chownSync(dataDir, user.uid, user.gid);
      chownSync(home, user.uid, user.gid);
      Object.assign(serverEnv, { HOME: home, SHAKER_PYTHON: "/usr/bin/python3" });
    }
    const server = await startServerProcess(serverEnv, { user });
    const url = server.url;
    const e: Env = {
      server,
      url,
      port: Number(new URL(url).port),
      pid: server.proc.pid!,
      dataDir,
      home,
      madeDirs,
      adminKey,
      aKey: "",
      bKey: "",
      aMark: `A-ECHO-MARK-${randomBytes(8).toString("hex")}`,
      aEchoVersionId: "",
      secret: `VICTIM-SECRET-${randomBytes(16).toString("hex")}`,
      uploaded: new Set(),
    };
    env = e;
    expect(readFileSync(`/proc/${e.pid}/comm`, "utf8").trim(), "the server's pid is node's").toBe("node");
    const registry = createClient(RegistryService, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
    const tag = randomBytes(4).toString("hex");
    const admin = { headers: { authorization: `Bearer ${adminKey}` } };
    e.aKey = (await registry.createApiKey({ accountName: `alice-${tag}` }, admin)).apiKey;
    e.bKey = (await registry.createApiKey({ accountName: `mallory-${tag}` }, admin)).apiKey;
    for (const key of [e.aKey, e.bKey]) {
      const store = await call(key, "POST", "/v1/datastores", { name: "ctl" });
      expect(store.status, store.text).toBeLessThan(300);
    }
    await upload(e.aKey, "victim", script("victim.py"), { timeout_seconds: 300, datastores: [{ name: "ctl", write: false }] });
    const echo = await upload(e.aKey, "echo", readFileSync(join(attacksDir, "echo.py"), "utf8").replace("__A_MARK__", e.aMark), {
      timeout_seconds: 60,
    });
    e.aEchoVersionId = echo.version_id;
    // Concurrent, so every worker compiles A's echo before the attacks (attack 4 aims at that cache).
    await aEchoes(4);
    return e;
  }

  async function closeEnv(e: Env): Promise<void> {
    const tree = serverTree();
    const stopped = stopServerProcess(e.server, "SIGTERM");
    const timer = setTimeout(() => e.server.proc.kill("SIGKILL"), 20_000);
    await stopped;
    clearTimeout(timer);
    // Whatever of the server's tree outlived it (a worker the server could not stop).
    for (const pid of tree) {
      if (pid !== e.pid && alive(pid)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // gone meanwhile
        }
      }
    }
    killDaemons();
    for (const dir of e.madeDirs) rmSync(dir, { recursive: true, force: true });
  }

  interface Victim {
    stream: Stream;
    marker: string;
    hostPid: number;
  }

  /** startVictim starts A's victim with its secret, waits until it holds it, and finds its host pid. */
  async function startVictim(): Promise<Victim> {
    const marker = `victim-${randomBytes(6).toString("hex")}`;
    const s = await stream(env.aKey, "victim", { marker }, { secrets: { VICTIM_SECRET: env.secret } });
    await s.waitEmitted((e) => e?.ready === true, "the victim to hold its secret");
    return { stream: s, marker, hostPid: await findHostPid(marker) };
  }

  /** finishVictim lets the victim return and checks it returned its own, untouched output. */
  async function finishVictim(v: Victim): Promise<void> {
    if (!v.stream.ended) await release(env.aKey, v.marker);
    const o = await outcome(v.stream);
    expect(o.status, `A's victim run: ${JSON.stringify(o.error)}`).toBe("succeeded");
    expect(o.output, "A's victim run's output").toEqual({
      who: "A",
      marker: v.marker,
      secret_sha: sha256(env.secret),
      hoard_intact: true,
      released: true,
    });
  }

  /** aEchoes runs A's echo n times, `concurrency` at a time, and checks every answer is A's own. */
  async function aEchoes(n: number, concurrency = n): Promise<void> {
    for (let start = 0; start < n; start += concurrency) {
      const batch = Array.from({ length: Math.min(concurrency, n - start) }, (_, i) => start + i);
      const answers = await Promise.all(
        batch.map((i) => call(env.aKey, "POST", "/v1/chat/completions", { model: "workflow:echo", input: { n: i } })),
      );
      answers.forEach((res, j) => {
        expect(res.status, `A's run ${batch[j]}: ${res.text.slice(0, 500)}`).toBe(200);
        expect(res.body.output, `A's run ${batch[j]} answered with A's output`).toEqual({ who: "A", n: batch[j], mark: env.aMark });
      });
    }
  }

  /** attack uploads one of B's attack workflows (once per test) and starts it, streamed. */
  async function attack(file: string, input: Record<string, unknown>): Promise<Stream> {
    const ref = `attack-${file.replace(/^\d+_/, "").replace(/\.py$/, "").replace(/_/g, "-")}`;
    if (!env.uploaded.has(ref)) {
      await upload(env.bKey, ref, script(file), { timeout_seconds: 120, datastores: [{ name: "ctl", write: false }] });
      env.uploaded.add(ref);
    }
    return stream(env.bKey, ref, input);
  }

  /** expectAttackFailed: the attack ran to its end, no step of it worked, and nothing of A's reached B. */
  function expectAttackFailed(o: Outcome): void {
    // SHAKER_ATTACKS_DEBUG=1 prints every attack's full report, failed steps included.
    if (process.env.SHAKER_ATTACKS_DEBUG) console.log(JSON.stringify({ status: o.status, error: o.error, attempts: o.attempts }, null, 1));
    expect.soft(o.status, `the attack ran to its end and reported: ${JSON.stringify(o.error)}`).toBe("succeeded");
    expect.soft(o.attempts.length, "steps the attack reported").toBeGreaterThan(0);
    expect.soft(breaches(o), "attack steps that worked").toEqual([]);
    expect.soft(leaks(o.text), "A's secrets, the server's keys or run tokens in what B got back").toEqual([]);
  }

  function breaches(o: Outcome): string[] {
    return o.attempts.filter((a) => a.ok).map((a) => `${a.what}: ${a.detail}`);
  }

  function leaks(text: string): string[] {
    const found = [env.secret, env.adminKey, env.aKey, env.aMark, "HOARD:"].filter((s) => text.includes(s));
    const tokens = text.match(/srt\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}/g) ?? [];
    return [...found, ...tokens.map((t) => `a run token ${t.slice(0, 20)}...`)];
  }

  // -- HTTP -------------------------------------------------------------------------------------------

  async function call(key: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: any; text: string }> {
    let res: Response;
    let text: string;
    try {
      res = await fetch(env.url + path, {
        method,
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(hang),
      });
      text = await res.text();
    } catch (e) {
      throw new Error(
        `${method} ${path}: ${(e as Error).message} (${(e as Error).name === "TimeoutError" ? `no answer within ${hang} ms` : "no answer"}); ${serverState()}`,
      );
    }
    let parsed: any;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    return { status: res.status, body: parsed, text };
  }

  /** serverState says whether the server process is still there, and the end of what it printed. */
  function serverState(): string {
    const p = env.server.proc;
    const state =
      p.exitCode !== null || p.signalCode !== null ? `the server exited (${p.exitCode ?? p.signalCode})` : "the server process is alive";
    return `${state}; its output ends with:\n${env.server.output().slice(-2000)}`;
  }

  async function upload(key: string, ref: string, source: string, extra: Record<string, unknown>): Promise<any> {
    const res = await call(key, "POST", "/v1/workflows/upload", { workflow_ref_name: ref, script: source, ...extra });
    if (res.status !== 201) throw new Error(`upload of ${ref} refused: ${res.status} ${res.text}`);
    return res.body.data;
  }

  async function release(key: string, marker: string): Promise<void> {
    const res = await call(key, "POST", "/v1/datastores/ctl/records", { records: [{ id: marker, text: "release" }] });
    expect(res.status, `release ${marker}: ${res.text}`).toBeLessThan(300);
  }

  async function runRecord(key: string, runId: string): Promise<any> {
    const res = await call(key, "GET", `/v1/runs/${runId}`);
    if (res.status !== 200) throw new Error(`GET /v1/runs/${runId}: ${res.status} ${res.text}`);
    return res.body.data;
  }

  /** stream starts a streamed invocation and reads its SSE events in the background. */
  async function stream(key: string, ref: string, input: unknown, extra: Record<string, unknown> = {}): Promise<Stream> {
    const res = await fetch(`${env.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: `workflow:${ref}`, input, stream: true, ...extra }),
      signal: AbortSignal.timeout(testTimeout),
    });
    if (res.status !== 200) throw new Error(`invoke ${ref}: ${res.status} ${await res.text()}`);
    const s: Stream = {
      runId: res.headers.get("x-request-id") ?? "",
      key,
      emitted: [],
      final: undefined,
      error: undefined,
      ended: false,
      done: Promise.resolve(),
      async waitEmitted(match, what, ms = hang) {
        const until = Date.now() + ms;
        for (;;) {
          const hit = s.emitted.find(match);
          if (hit !== undefined) return hit;
          if (s.ended) {
            const record = await runRecord(key, s.runId).catch(() => undefined);
            throw new Error(`waiting for ${what}: the run ended first (${record?.status}: ${JSON.stringify(record?.error ?? s.error)})`);
          }
          if (Date.now() > until) throw new Error(`waiting for ${what}: nothing within ${ms} ms`);
          await sleep(20);
        }
      },
    };
    const onEvent = (text: string) => {
      for (const line of text.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const event = JSON.parse(line.slice(6));
        if (event.error) s.error = event.error;
        if ("emitted" in event) s.emitted.push(event.emitted);
        if ("output" in event) s.final = event;
      }
    };
    s.done = (async () => {
      // Events end at a blank line; a 48 MiB event comes in many chunks, so they are joined once.
      let parts: Buffer[] = [];
      let last = -1; // the last byte of the event being read, -1 at its start
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          const b = Buffer.from(chunk);
          let start = 0;
          for (let i = b.indexOf(10); i >= 0; i = b.indexOf(10, i + 1)) {
            if ((i > start ? b[i - 1] : last) !== 10) continue;
            parts.push(b.subarray(start, i + 1));
            onEvent(Buffer.concat(parts).toString("utf8"));
            parts = [];
            start = i + 1;
            last = -1;
          }
          if (start < b.length) {
            parts.push(b.subarray(start));
            last = b[b.length - 1];
          }
        }
      } catch (err) {
        s.error ??= { type: "StreamError", message: (err as Error).message };
      } finally {
        s.ended = true;
      }
    })();
    return s;
  }

  /** outcome waits for a streamed run to end and reads its record. */
  async function outcome(s: Stream): Promise<Outcome> {
    const ended = await Promise.race([s.done.then(() => true), sleep(hang).then(() => false)]);
    if (!ended) throw new Error(`run ${s.runId} did not end within ${hang} ms`);
    // A server the attack broke has no record to give: the stream's emitted attempts still tell.
    let record: any;
    try {
      record = await runRecord(s.key, s.runId);
      const until = Date.now() + hang;
      while (["running", "queued"].includes(record.status) && Date.now() < until) {
        await sleep(100);
        record = await runRecord(s.key, s.runId);
      }
    } catch (e) {
      record = { status: "unknown: its record could not be read", error: { type: "NoRecord", message: (e as Error).message } };
    }
    const emittedAttempts = s.emitted.filter((e) => e?.attempt).map((e) => e.attempt as Attempt);
    const attempts = emittedAttempts.length > 0 ? emittedAttempts : ((record.output?.attempts as Attempt[] | undefined) ?? []);
    return {
      runId: s.runId,
      status: record.status,
      output: record.output,
      error: record.error ?? s.error,
      emitted: s.emitted,
      attempts,
      text: JSON.stringify(record) + JSON.stringify(s.emitted) + JSON.stringify(s.final ?? null) + JSON.stringify(s.error ?? null),
    };
  }

  // -- the host's view ----------------------------------------------------------------------------------

  /** serverTree is the server and all its descendants, as the host sees them now. */
  function serverTree(): number[] {
    const parents = parentPids();
    const tree = new Set([env.pid]);
    for (let grew = true; grew; ) {
      grew = false;
      for (const [pid, ppid] of parents) {
        if (tree.has(ppid) && !tree.has(pid)) {
          tree.add(pid);
          grew = true;
        }
      }
    }
    return [...tree].filter(alive);
  }

  function isPython(pid: number): boolean {
    try {
      return /python/.test(readFileSync(`/proc/${pid}/comm`, "utf8")) || /python/.test(basename(readlinkSync(`/proc/${pid}/exe`)));
    } catch {
      return false;
    }
  }

  /** pythonTree is the Python processes of the server's tree: workers, fork servers, spares, runs. */
  function pythonTree(): number[] {
    return serverTree().filter((p) => p !== env.pid && isPython(p));
  }

  /** workersAndForkServers are the Python processes of the tree that have Python children. */
  function workersAndForkServers(): number[] {
    const python = new Set(pythonTree());
    const parents = parentPids();
    return [...python].filter((p) => [...python].some((c) => parents.get(c) === p));
  }

  /** findHostPid finds the process that holds a file named after marker open (a run's TMPDIR file). */
  async function findHostPid(marker: string): Promise<number> {
    let found: number | undefined;
    const ok = await waitUntil(() => {
      for (const name of readdirSync("/proc")) {
        if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
        let fds: string[];
        try {
          fds = readdirSync(`/proc/${name}/fd`);
        } catch {
          continue;
        }
        for (const fd of fds) {
          try {
            if (readlinkSync(`/proc/${name}/fd/${fd}`).includes(marker)) {
              found = Number(name);
              return true;
            }
          } catch {
            // closed meanwhile
          }
        }
      }
      return false;
    }, 15_000);
    if (!ok || found === undefined) throw new Error(`no host process holds the file ${marker} open: cannot find the run's host pid`);
    return found;
  }

  function hostUid(pid: number): number {
    const m = /^Uid:\s+\d+\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return Number(m![1]);
  }

  /** daemons are the processes on the host with an argument 987654 (attack 8's `sleep 987654`). */
  function daemons(): number[] {
    const out: number[] = [];
    for (const name of readdirSync("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      try {
        if (readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0").includes("987654") && alive(Number(name))) out.push(Number(name));
      } catch {
        // gone meanwhile
      }
    }
    return out;
  }

  function killDaemons(): void {
    for (const pid of daemons()) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
  }

  function describeProcess(pid: number): string {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
      const cgroup = readFileSync(`/proc/${pid}/cgroup`, "utf8")
        .trim()
        .split("\n")
        .filter((l) => /pids|^0::/.test(l))
        .join(" ");
      return `pid ${pid} uid ${hostUid(pid)} "${cmd}" (${cgroup})`;
    } catch {
      return `pid ${pid}`;
    }
  }

  /** leftovers lists the paths named `name` in dirs, and one and two levels below /tmp and /var/tmp. */
  function leftovers(name: string, dirs: string[]): string[] {
    const candidates = new Set(dirs.filter(Boolean).map((d) => join(d, name)));
    for (const base of ["/tmp", "/var/tmp"]) {
      for (const entry of safeList(base)) {
        const dir = join(base, entry);
        candidates.add(join(dir, name));
        if (isDir(dir)) for (const sub of safeList(dir)) candidates.add(join(dir, sub, name));
      }
    }
    return [...candidates].filter((p) => existsSync(p));
  }

  /** snapshot maps the harness's top-level files and its package's files to their contents' hashes. */
  function snapshot(dir: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const entry of [...readdirSync(dir), ...readdirSync(join(dir, "shaker")).map((f) => join("shaker", f))]) {
      const path = join(dir, entry);
      if (!isDir(path)) out[entry] = createHash("sha256").update(readFileSync(path)).digest("hex");
    }
    return out;
  }
});

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** waitUntil polls check every 100 ms; false when it is still not true after ms (the caller says what). */
async function waitUntil(check: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > until) return false;
    await sleep(100);
  }
}
