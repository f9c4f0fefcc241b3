// The kernel confinement of runs, property by property, on a real server with real Python. The
// attack matrix of two accounts (each row of docs/security.md, as root and as an unprivileged user)
// is test/reliability/attacks.test.ts.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { harnessDir } from "../services/executor/pool.js";
import { startTestServer, type TestServer, waitFor } from "./helpers.js";

const probe = `
import os, socket, time

def execute(ctx):
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    out = {"pid": os.getpid(), "uid": os.getuid(), "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
           "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
           "seccomp": status["Seccomp"].strip(), "tmpdir": os.environ["TMPDIR"]}
    try:
        out["data"] = sorted(os.listdir(ctx.input["data"]))
    except OSError as e:
        out["data"] = type(e).__name__
    for name, path in (("root", "/shaker-probe"), ("harness", ctx.input["harness"] + "/shaker/probe.py")):
        try:
            open(path, "w").write("x")
            out[name] = "written"
        except OSError as e:
            out[name] = type(e).__name__
    try:
        socket.create_connection(("127.0.0.1", ctx.input["port"]), timeout=2).close()
        out["loopback"] = "connected"
    except OSError as e:
        out["loopback"] = type(e).__name__
    mine = os.path.join(os.environ["TMPDIR"], "shaker-sandbox-test-" + ctx.run_id)
    out["tmp_before"] = os.listdir(os.environ["TMPDIR"])
    open(mine, "w").write(ctx.run_id)
    time.sleep(ctx.input.get("hold", 0))
    return out
`;

const forker = `
import os, time

def execute(ctx):
    forked = 0
    for _ in range(ctx.input["forks"]):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            if ctx.input.get("daemon"):
                os.setsid()
                os.execvp("sleep", ["sleep", str(ctx.input["daemon"])])
            time.sleep(2)
            os._exit(0)
        forked += 1
    return {"forked": forked}
`;

const filler = `
import os

def execute(ctx):
    path = os.path.join(os.environ["TMPDIR"], "fill")
    written = 0
    try:
        with open(path, "wb") as f:
            for _ in range(ctx.input["mib"]):
                f.write(b"x" * 1048576)
                f.flush()
                written += 1
    except OSError as e:
        return {"written": written, "error": type(e).__name__}
    return {"written": written}
`;

const hog = `
import os, time

def execute(ctx):
    pids = []
    for _ in range(ctx.input["processes"]):
        pid = os.fork()
        if pid == 0:
            block = bytearray(ctx.input["mib"] * 1048576)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(5)
            os._exit(0)
        pids.append(pid)
    # A process the memory limit stopped was killed by SIGKILL (the kernel's OOM killer, in the run's cgroup).
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
`;

const forger = `
import os, struct

def execute(ctx):
    kind = ctx.input["kind"]
    if kind == "huge":
        os.write(4, struct.pack(">I", 1 << 30))
    else:
        body = kind.encode() + b'{"code": 0, "signal": 0, "pid": 1, "output_truncated": false}'
        os.write(4, struct.pack(">I", len(body)) + body)
    import time
    time.sleep(30)
    return "not reached"
`;

const misshapen = `
import os, struct, json

def execute(ctx):
    for kind, body in ((b"E", {"seq": "x", "value": 1, "time": "y"}), (b"L", {"level": 5, "message": {"a": 1}, "fields": "s", "time": None}),
                       (b"E", {"seq": 1e308, "time": -1e308}), (b"L", {}), (b"E", [])):
        data = kind + json.dumps(body).encode()
        os.write(4, struct.pack(">I", len(data)) + data)
    return "done"
`;

const emitter = `
def execute(ctx):
    ctx.emit("x" * ctx.input["bytes"])
    return "done"
`;

describe("runs confined by the kernel", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({
      sandbox: "auto",
      runMaxProcesses: 16,
      runMemoryBytes: 256 * 1024 * 1024,
      runTmpBytes: 8 * 1024 * 1024,
    });
    await server.upload("probe", probe);
    await server.upload("forker", forker);
    await server.upload("filler", filler);
    await server.upload("hog", hog);
    await server.upload("forger", forger);
    await server.upload("emitter", emitter);
    await server.upload("misshapen", misshapen);
  });
  afterAll(() => server.close());
  const probeInput = (hold = 0) => ({ data: server.dataDir, harness: harnessDir, port: server.shaker.port, hold });

  it("says in the banner what confines runs", () => {
    expect(server.shaker.isolation).toMatch(/^confined by the kernel/);
  });

  it("runs each run as pid 1 of its own PID namespace, without capabilities, under seccomp, as its own uid", async () => {
    const [a, b] = await Promise.all([
      server.invoke({ model: "workflow:probe", input: probeInput(1) }),
      server.invoke({ model: "workflow:probe", input: probeInput(1) }),
    ]);
    for (const res of [a, b]) {
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      const out = res.body.output;
      expect(out.pid).toBe(1);
      expect(out.procs).toEqual([1]);
      expect(out.cap_eff).toBe("0000000000000000");
      expect(out.no_new_privs).toBe("1");
      expect(out.seccomp).toBe("2");
      expect(out.uid).not.toBe(0);
    }
    if (process.getuid?.() === 0) expect(a.body.output.uid).not.toBe(b.body.output.uid);
  });

  it("shows a run no data directory, a read-only root and harness, and no network", async () => {
    const out = (await server.invoke({ model: "workflow:probe", input: probeInput() })).body.output;
    expect(out.data === "FileNotFoundError" || (Array.isArray(out.data) && out.data.length === 0)).toBe(true);
    expect(out.root).not.toBe("written");
    expect(out.harness).not.toBe("written");
    expect(out.loopback).not.toBe("connected");
  });

  it("gives every run a /tmp of its own that is gone with it", async () => {
    const first = (await server.invoke({ model: "workflow:probe", input: probeInput() })).body.output;
    const second = (await server.invoke({ model: "workflow:probe", input: probeInput() })).body.output;
    expect(first.tmpdir).toBe("/tmp");
    // (A checkout under /tmp shows its bound path there too, read-only.)
    expect(second.tmp_before.filter((name: string) => name.startsWith("shaker-sandbox-test-"))).toEqual([]);
  });

  it("bounds what a run can write to its /tmp", async () => {
    const res = await server.invoke({ model: "workflow:filler", input: { mib: 32 } });
    expect(res.status).toBe(200);
    expect(res.body.output.error).toBe("OSError");
    expect(res.body.output.written).toBeLessThanOrEqual(8);
  });

  it("stops a run's forks at the process cap", async () => {
    const res = await server.invoke({ model: "workflow:forker", input: { forks: 100 } });
    expect(res.status).toBe(200);
    expect(res.body.output.forked).toBeGreaterThan(0);
    expect(res.body.output.forked).toBeLessThan(16);
  });

  it("kills everything a run started when it ends, setsid daemons too", async () => {
    const marker = String(900_000 + Math.floor(Math.random() * 99_999));
    const res = await server.invoke({ model: "workflow:forker", input: { forks: 2, daemon: marker } });
    expect(res.status).toBe(200);
    const daemons = () =>
      readdirSync("/proc").filter((p) => {
        try {
          return /^\d+$/.test(p) && readFileSync(`/proc/${p}/cmdline`, "utf8").includes(marker);
        } catch {
          return false;
        }
      });
    await waitFor(() => daemons().length === 0, "the run's daemons to be gone", 5_000);
  });

  // Memory cgroups are writable by root (these machines and CI); as another user the banner says none.
  it.runIf(process.getuid?.() === 0)("caps the memory of a whole run, not only of each process", async () => {
    expect(server.shaker.isolation).toContain("memory");
    // 4 x 120 MiB is within each process's 256 MiB limit, and twice the run's.
    const res = await server.invoke({ model: "workflow:hog", input: { processes: 4, mib: 120 } });
    expect(res.status).toBe(200);
    expect(res.body.output).toContain(-9);
  });

  it("ends a run that forges frames of the worker's kinds or announces a huge one", async () => {
    for (const kind of ["Q", "S", "N", "huge"]) {
      const res = await server.invoke({ model: "workflow:forger", input: { kind } });
      expect(res.status, kind).toBe(500);
      expect(res.body.error.message, kind).toContain("ProtocolError");
    }
  });

  it("takes a run's frames of the wrong shape as data of the right types, and serves on", async () => {
    for (const stream of [false, true]) {
      const res = await server.invoke({ model: "workflow:misshapen", input: {}, stream });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
    }
    const runs = await server.request("GET", "/v1/runs?limit=1");
    expect(runs.body.data[0].status).toBe("succeeded");
    expect(runs.body.data[0].output).toBe("done");
    expect((await server.invoke({ model: "workflow:probe", input: probeInput() })).status).toBe(200);
  });

  it("delivers a 48 MiB emitted value whole", async () => {
    const bytes = 48 * 1024 * 1024;
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:emitter", input: { bytes }, stream: true }),
    });
    const text = await res.text();
    expect(res.status).toBe(200);
    expect(text).toContain("x".repeat(1024));
    expect(text.length).toBeGreaterThan(bytes);
  });

  it("leaves nothing of its runs on the host's /tmp", () => {
    expect(readdirSync("/tmp").filter((name) => name.startsWith("shaker-sandbox-test-"))).toEqual([]);
  });
});

describe("a server's leftovers", () => {
  it("removes the runs' socket directory of a server killed before it could", async () => {
    const dead = spawnSync("true").pid!; // a pid nobody uses any more
    const stale = join(tmpdir(), `shaker-rpc-${dead}-killed`);
    mkdirSync(stale, { recursive: true });
    const server = await startTestServer();
    try {
      expect(existsSync(stale)).toBe(false);
    } finally {
      await server.close();
    }
  });
});
