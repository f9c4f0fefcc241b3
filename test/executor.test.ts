import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecutorService, RunStatus } from "../gen/shaker/executor/v1/executor_pb.js";
import { toValue } from "../services/shared/json.js";
import { alive, childrenOf, parentPids, startTestServer, type TestServer } from "./helpers.js";

// Every workflow here that must be killed writes its pid (and its grandchild's) to a file first,
// so the test can check that the process is really gone afterwards.
const sleeper = `
import os, time

def execute(ctx):
    with open(ctx.input["pidfile"], "w") as f:
        f.write(str(os.getpid()))
    ctx.emit({"pid": os.getpid()})
    time.sleep(ctx.input.get("seconds", 30))
    return "woke up"
`;

const forker = `
import os, time

def execute(ctx):
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    with open(ctx.input["pidfile"], "w") as f:
        f.write(str(pid))
    if ctx.input.get("wait"):
        time.sleep(30)
    return {"grandchild": pid}
`;

async function until<T>(what: string, probe: () => T | undefined | false, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** environOf reads a process's environment from /proc. */
function environOf(pid: number): Map<string, string> {
  const env = new Map<string, string>();
  for (const entry of readFileSync(`/proc/${pid}/environ`, "utf8").split("\0")) {
    const at = entry.indexOf("=");
    if (at > 0) env.set(entry.slice(0, at), entry.slice(at + 1));
  }
  return env;
}

/** localeAndPaths are the variables a Python process needs to start and behave (some set by the pool itself). */
const localeAndPaths =
  /^(PATH|HOME|LANG|LANGUAGE|LC_[A-Z]+|TZ|TMPDIR|PYTHONHOME|PYTHONPATH|PYTHONUTF8|PYTHONIOENCODING|PYTHONDONTWRITEBYTECODE|LD_LIBRARY_PATH|SSL_CERT_FILE|SSL_CERT_DIR)$/;

/** realPython is the path of the interpreter `python3` runs (found before any server runs in this process). */
const realPython = execFileSync("python3", ["-c", "import sys; print(sys.executable)"], { encoding: "utf8" }).trim();

/**
 * pidsCgroupRoot is the pids cgroup hierarchy (v1 or v2) this process may make groups in, if any: a
 * property of the host (root, or a delegated hierarchy), decided before the tests run.
 */
function writablePidsCgroup(): string | undefined {
  const v1 = existsSync("/sys/fs/cgroup/pids/cgroup.procs");
  const root = v1 ? "/sys/fs/cgroup/pids" : "/sys/fs/cgroup";
  try {
    if (!v1 && !readFileSync(join(root, "cgroup.subtree_control"), "utf8").split(/\s+/).includes("pids")) return undefined;
    const probe = join(root, `shaker-test-probe-${process.pid}`);
    mkdirSync(probe);
    rmdirSync(probe);
    return root;
  } catch {
    return undefined;
  }
}
const pidsCgroupRoot = writablePidsCgroup();

const readPid = (file: string) => () => (existsSync(file) && readFileSync(file, "utf8") ? Number(readFileSync(file, "utf8")) : undefined);

describe("Executor limits and faults", () => {
  let server: TestServer;
  let dir: string;
  let executor: ReturnType<typeof createClient<typeof ExecutorService>>;
  const auth = () => ({ headers: { authorization: `Bearer ${server.apiKey}` } });
  let n = 0;
  const pidFile = () => join(dir, `pid-${n++}`);

  /** settledStatus is the run's status once it is no longer running (the kill is seen before the record). */
  async function settledStatus(runId: string): Promise<RunStatus | undefined> {
    let status: RunStatus | undefined;
    const end = Date.now() + 5000;
    do {
      status = (await executor.getRun({ runId }, auth())).run?.status;
      if (status !== RunStatus.RUNNING) return status;
      await new Promise((r) => setTimeout(r, 20));
    } while (Date.now() < end);
    return status;
  }

  /** healthy proves the server still serves a plain run after a fault. */
  async function healthy(): Promise<void> {
    const res = await server.invoke({ model: "workflow:ok", input: { n: 7 } });
    expect(res.status).toBe(200);
    expect(res.body.output).toEqual({ n: 7 });
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "shaker-exec-"));
    server = await startTestServer({ workers: 2, runMemoryBytes: 512 * 1024 * 1024 });
    executor = createClient(ExecutorService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    await server.upload("ok", "def execute(ctx):\n    return {'n': ctx.input['n']}\n");
    await server.upload("sleeper", sleeper);
    await server.upload("sleeper-1s", sleeper, { timeout_seconds: 1 });
    await server.upload("forker", forker);
  });
  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("answers 408 at timeout_seconds, kills the process, and records the run as timed out", async () => {
    const pidfile = pidFile();
    const res = await server.invoke({ model: "workflow:sleeper-1s", input: { pidfile } });
    expect(res.status).toBe(408);
    expect(res.body.error.message).toContain("timeout of 1s");
    const pid = readPid(pidfile)()!;
    await until("the timed-out process to die", () => !alive(pid));
    const { runs } = await executor.listRuns({ workflowRefName: "sleeper-1s" }, auth());
    expect(runs[0].status).toBe(RunStatus.TIMED_OUT);
    expect(runs[0].error?.type).toBe("TimeoutError");
    await healthy();
  });

  it("fails a run that allocates beyond the memory limit with MemoryError", async () => {
    await server.upload("hog", "def execute(ctx):\n    block = bytearray(1024 * 1024 * 1024)\n    return len(block)\n");
    const res = await server.invoke({ model: "workflow:hog", input: {} });
    expect(res.status).toBe(500);
    expect(res.body.error.message).toContain("MemoryError");
    await healthy();
  });

  it("kills a run that prints without end and says why", async () => {
    await server.upload("chatty", "def execute(ctx):\n    while True:\n        print('x' * 1000)\n    return 1\n");
    const res = await server.invoke({ model: "workflow:chatty", input: {} });
    expect(res.status).toBe(500);
    expect(res.body.error.message).toContain("more output than the limit");
    await healthy();
  });

  it("keeps the first 1000 log lines and the first MiB of emitted values on the record, and says what it dropped", async () => {
    await server.upload(
      "verbose",
      "def execute(ctx):\n    for i in range(1100):\n        ctx.log(f'line {i}')\n    for i in range(300):\n        ctx.emit('v' * 4096)\n    return 'done'\n",
    );
    const res = await server.invoke({ model: "workflow:verbose", input: {} });
    expect(res.status).toBe(200);
    expect(res.body.output).toBe("done");
    const { run } = await executor.getRun({ runId: res.body.run_id }, auth());
    expect(run!.logs.length).toBe(1000);
    expect(run!.logs[999].message).toBe("line 999");
    expect(run!.emitted.length).toBeGreaterThan(200);
    expect(run!.emitted.length).toBeLessThan(300);
    expect(run!.emitted.map((e) => e.seq)).toEqual(run!.emitted.map((_, i) => run!.emitted[0].seq + i));
    expect(run!.warnings).toEqual([
      "100 log lines beyond the first 1000 were dropped",
      `${300 - run!.emitted.length} emitted values beyond the first 1048576 bytes were not kept on the run record (the stream carried them all)`,
    ]);
    await healthy();
  });

  it("reports a segfault as a crash with the signal", async () => {
    await server.upload("segv", "import ctypes\n\ndef execute(ctx):\n    ctypes.string_at(0)\n    return 1\n");
    const res = await server.invoke({ model: "workflow:segv", input: {} });
    expect(res.status).toBe(500);
    expect(res.body.error.message).toContain("SIGSEGV");
    await healthy();
  });

  it("reports os._exit before returning with its exit code", async () => {
    await server.upload("quitter", "import os\n\ndef execute(ctx):\n    os._exit(3)\n    return 1\n");
    const res = await server.invoke({ model: "workflow:quitter", input: {} });
    expect(res.status).toBe(500);
    expect(res.body.error.message).toContain("exited with code 3");
    await healthy();
  });

  it("kills what a run forked when the run returns", async () => {
    const pidfile = pidFile();
    const res = await server.invoke({ model: "workflow:forker", input: { pidfile } });
    expect(res.status).toBe(200);
    const grandchild = res.body.output.grandchild as number;
    expect(grandchild).toBeGreaterThan(0);
    await until("the grandchild to die", () => !alive(grandchild));
    await healthy();
  });

  it("kills what a run forked when the run times out", async () => {
    await server.upload("forker-1s", forker, { timeout_seconds: 1 });
    const pidfile = pidFile();
    const res = await server.invoke({ model: "workflow:forker-1s", input: { pidfile, wait: true } });
    expect(res.status).toBe(408);
    const grandchild = readPid(pidfile)()!;
    await until("the grandchild to die", () => !alive(grandchild));
    await healthy();
  });

  it("resumes the runs of a worker that dies, replaces the worker, and kills its runs' processes", async () => {
    const before = server.shaker.workerPids();
    const pidfile = pidFile();
    const pending = server.invoke({ model: "workflow:sleeper", input: { pidfile, seconds: 2 } });
    const pid = await until("the run to start", readPid(pidfile));
    // Each child has a TMPDIR named after its worker: the run's and the spares'.
    const tmpdirsOf = (workers: number[]) => readdirSync(tmpdir()).filter((n) => workers.some((w) => n.startsWith(`shaker-${w}-`)));
    expect(tmpdirsOf(before).length).toBeGreaterThan(0);
    for (const worker of before) process.kill(worker, "SIGKILL");
    // A crash interrupts the run: it is executed again, and its caller gets the second attempt's answer.
    const res = await pending;
    expect(res.status).toBe(200);
    expect(res.body.output).toBe("woke up");
    const { run } = await executor.getRun({ runId: res.body.run_id }, auth());
    // Every worker was killed: an attempt may land on the next one to die before it is replaced.
    expect(run!.runAttempt).toBeGreaterThanOrEqual(2);
    expect(run!.attempts.map((a) => a.interrupted)).toEqual([...Array(run!.runAttempt - 1).fill(true), false]);
    expect(readPid(pidfile)()).not.toBe(pid);
    await until("the orphaned run to die", () => !alive(pid));
    await until("the dead workers' children's TMPDIRs to be removed", () => tmpdirsOf(before).length === 0);
    await until("new workers", () => server.shaker.workerPids().every((p) => p > 0 && !before.includes(p)));
    await healthy();
  });

  it("resumes the runs of a worker whose fork server dies, replaces the worker, and kills its runs' processes", async () => {
    const pidfile = pidFile();
    const pending = server.invoke({ model: "workflow:sleeper", input: { pidfile, seconds: 2 } });
    const pid = await until("the run to start", readPid(pidfile));
    // The run's process is a child of its worker's fork server, itself the worker's only child.
    const parents = parentPids();
    const forkServer = parents.get(pid)!;
    const worker = parents.get(forkServer)!;
    expect(server.shaker.workerPids()).toContain(worker);
    process.kill(forkServer, "SIGKILL");
    const res = await pending;
    expect(res.status).toBe(200);
    expect(res.body.output).toBe("woke up");
    await until("the orphaned run to die", () => !alive(pid));
    await until("a new worker", () => !server.shaker.workerPids().includes(worker));
    await healthy();
  });

  it.runIf(pidsCgroupRoot)(
    "fails a run no process can be forked for with the reason, then serves again (where a pids cgroup is writable)",
    async () => {
      const root = pidsCgroupRoot!;
      // Each worker's only child is its fork server; the fork server's children are its spares (2).
      const forkServers = server.shaker.workerPids().map((w) => childrenOf(w)[0]);
      await until("every fork server to hold its 2 spares", () => forkServers.every((f) => childrenOf(f).length === 2));
      const pidsGroupOf = (pid: number) => {
        const text = readFileSync(`/proc/${pid}/cgroup`, "utf8");
        return (/^\d+:pids:(.*)$/m.exec(text) ?? /^0::(.*)$/m.exec(text))?.[1] ?? "";
      };
      const home = forkServers.map(pidsGroupOf);
      // A pids cgroup with room for the fork servers themselves and nothing more: each fork fails.
      const full = join(root, `shaker-test-full-${process.pid}`);
      mkdirSync(full);
      try {
        writeFileSync(join(full, "pids.max"), String(forkServers.length));
        for (const f of forkServers) writeFileSync(join(full, "cgroup.procs"), String(f));
        // 4 spares serve 4 runs; the other 3 have none and none can be made.
        const results = await Promise.all(
          Array.from({ length: 7 }, () => server.invoke({ model: "workflow:sleeper", input: { pidfile: pidFile(), seconds: 0.5 } })),
        );
        const failed = results.filter((r) => r.status !== 200);
        expect(results.filter((r) => r.status === 200).length).toBe(4);
        expect(failed.length).toBe(3);
        for (const f of failed)
          expect(f.body.error.message).toMatch(/no process could be started for the run: .*Resource temporarily unavailable/);
      } finally {
        forkServers.forEach((f, i) => {
          writeFileSync(join(root, home[i], "cgroup.procs"), String(f));
        });
        rmdirSync(full);
      }
      await healthy();
    },
  );

  it("cancels a run with CancelRun and kills its process", async () => {
    const pidfile = pidFile();
    const { started } = await executor.startRun(
      { invocation: { workflowRefName: "sleeper", input: toValue({ pidfile }), hasInput: true } },
      auth(),
    );
    const pid = await until("the run to start", readPid(pidfile));
    const { cancelled } = await executor.cancelRun({ runId: started!.runId }, auth());
    expect(cancelled).toBe(true);
    await until("the cancelled process to die", () => !alive(pid));
    expect(await settledStatus(started!.runId)).toBe(RunStatus.CANCELLED);
    const again = await executor.cancelRun({ runId: started!.runId }, auth());
    expect(again.cancelled).toBe(false);
    await expect(executor.cancelRun({ runId: "run_nope" }, auth())).rejects.toThrow(/not found/);
    await healthy();
  });

  it("kills the run of a streaming caller that disconnects", async () => {
    const pidfile = pidFile();
    const abort = new AbortController();
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:sleeper", input: { pidfile }, stream: true }),
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    const runId = res.headers.get("x-request-id")!;
    // The first event is the emitted pid, as the workflow saw it.
    const reader = res.body!.getReader();
    let text = "";
    while (!text.includes("\n\n")) text += new TextDecoder().decode((await reader.read()).value);
    const pid = JSON.parse(text.slice(text.indexOf("data: ") + 6, text.indexOf("\n\n"))).emitted.pid as number;
    expect(pid).toBe(readPid(pidfile)());
    abort.abort();
    await until("the abandoned process to die", () => !alive(pid));
    expect(await settledStatus(runId)).toBe(RunStatus.CANCELLED);
    await healthy();
  });

  it("keeps SHAKER_SPARES spare children per worker, the only server variable besides locale and paths a worker gets", async () => {
    // The server's environment as it starts: its tuning, and a secret no Python process may see.
    const serverEnv = { SHAKER_SPARES: "3", SHAKER_TEST_SERVER_SECRET: "upstream-key-workers-must-not-see" };
    Object.assign(process.env, serverEnv);
    let tuned: TestServer;
    try {
      // The interpreter itself, not a launcher (pyenv's shim is a shell script that adds variables).
      tuned = await startTestServer({ workers: 1, python: realPython });
    } finally {
      for (const name of Object.keys(serverEnv)) delete process.env[name];
    }
    try {
      const [worker] = tuned.shaker.workerPids();
      // The worker's only child is its fork server (once started), whose children are the spares.
      const [forkServer, spares] = await until("3 spares", () => {
        const f = childrenOf(worker!)[0] ?? -1;
        const children = childrenOf(f);
        return children.length === 3 && ([f, children] as const);
      });
      for (const pid of [worker!, forkServer, ...spares]) {
        const env = environOf(pid);
        expect(env.get("SHAKER_SPARES"), `SHAKER_SPARES of ${pid}`).toBe("3");
        expect(env.has("SHAKER_TEST_SERVER_SECRET"), `the server's secret in ${pid}`).toBe(false);
        // Of the server's own variables, a Python process gets locale, paths and its tuning, nothing else.
        const fromServer = [...env.keys()].filter((name) => process.env[name] !== undefined || name in serverEnv);
        expect(
          fromServer.filter((name) => !localeAndPaths.test(name) && name !== "SHAKER_SPARES"),
          `the server's variables in ${pid}`,
        ).toEqual([]);
      }
    } finally {
      await tuned.close();
    }
  });

  it("refuses runs beyond the account's concurrency limit with 429, then serves again", async () => {
    const small = await startTestServer({ workers: 1, maxConcurrentRunsPerAccount: 1 });
    try {
      await small.upload("sleeper", sleeper);
      await small.upload("ok", "def execute(ctx):\n    return 1\n");
      const pidfile = pidFile();
      const first = small.invoke({ model: "workflow:sleeper", input: { pidfile, seconds: 2 } });
      await until("the first run to start", readPid(pidfile));
      const second = await small.invoke({ model: "workflow:ok", input: {} });
      expect(second.status).toBe(429);
      expect((await first).status).toBe(200);
      expect((await small.invoke({ model: "workflow:ok", input: {} })).status).toBe(200);
    } finally {
      await small.close();
    }
  });
});
