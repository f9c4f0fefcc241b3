// The bwrap sandbox and the per-run process cap, where this host has them (CI installs bubblewrap).
import { spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers.js";

const hasBwrap = spawnSync("bwrap", ["--ro-bind", "/", "/", "true"], { stdio: "ignore" }).status === 0;

const probe = `
import os, time
def execute(ctx):
    out = {}
    try:
        out["data"] = sorted(os.listdir(ctx.input["data"]))
    except OSError as e:
        out["data"] = type(e).__name__
    try:
        with open("/etc/shaker-probe", "w") as f:
            f.write("x")
        out["etc"] = "written"
    except OSError as e:
        out["etc"] = type(e).__name__
    with open("/tmp/shaker-sandbox-probe", "w") as f:
        f.write(ctx.run_id)
    out["tmp_mine"] = open("/tmp/shaker-sandbox-probe").read() == ctx.run_id
    forked = []
    for i in range(ctx.input.get("forks", 0)):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(1)
            os._exit(0)
        forked.append(pid)
    out["forked"] = len(forked)
    return out
`;

describe.skipIf(!hasBwrap)("the bwrap sandbox", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ sandbox: "bwrap", runMaxProcesses: 16 });
    await server.upload("probe", probe);
  });
  afterAll(() => server.close());

  it("says what confines runs", () => {
    expect(server.shaker.isolation).toContain("bwrap sandbox");
  });

  it("gives runs a read-only root, a private /tmp and no view of the data directory", async () => {
    const res = await server.invoke({ model: "workflow:probe", input: { data: server.dataDir } });
    expect(res.status).toBe(200);
    expect(res.body.output.data).toEqual([]);
    expect(res.body.output.etc).toBe("OSError");
    expect(res.body.output.tmp_mine).toBe(true);
    // The file the run wrote to its /tmp is not on the host.
    expect(spawnSync("test", ["-e", "/tmp/shaker-sandbox-probe"]).status).not.toBe(0);
  });

  it("stops a run's forks at the process cap (where a pids cgroup is writable)", async (ctx) => {
    if (!server.shaker.isolation.includes("processes per run")) ctx.skip();
    const res = await server.invoke({ model: "workflow:probe", input: { data: "/", forks: 100 } });
    expect(res.status).toBe(200);
    expect(res.body.output.forked).toBeLessThan(16);
    expect(res.body.output.forked).toBeGreaterThan(0);
  });
});
