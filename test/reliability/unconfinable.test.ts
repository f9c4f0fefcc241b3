// A host whose kernel will not confine runs (here: namespaces denied to the server by a seccomp filter,
// as a container's default profile does): the server says so at start, and runs only admin accounts'
// workflows until its operator sets SHAKER_SANDBOX=none knowingly.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryService } from "../../gen/shaker/registry/v1/registry_pb.js";
import { loadConfig } from "../../services/shared/config.js";
import { repoDir, type ServerProcess, startServerProcess, stopServerProcess } from "./process.js";

const adminKey = "sk-unconfinable-admin";
const script = "def execute(ctx):\n    return {'ran': True}\n";

async function call(url: string, key: string, path: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(url + path, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

describe.each(["auto", "none"] as const)("a kernel that refuses namespaces, SHAKER_SANDBOX=%s", (mode) => {
  let server: ServerProcess;
  let dataDir: string;
  let userKey: string;
  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "shaker-unconfinable-"));
    server = await startServerProcess(
      { SHAKER_DATA_DIR: dataDir, SHAKER_API_KEY: adminKey, SHAKER_SANDBOX: mode, SHAKER_WORKERS: "1" },
      { wrap: [loadConfig().python, `${repoDir}test/reliability/no-namespaces.py`] },
    );
    const registry = createClient(RegistryService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    userKey = (await registry.createApiKey({ accountName: "tenant" }, { headers: { authorization: `Bearer ${adminKey}` } })).apiKey;
    for (const key of [adminKey, userKey]) {
      const up = await call(server.url, key, "/v1/workflows/upload", { workflow_ref_name: "hello", script });
      expect(up.status, JSON.stringify(up.body)).toBe(201);
    }
  });
  afterAll(async () => {
    await stopServerProcess(server, "SIGTERM");
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("says at start that runs are not confined, and why", () => {
    expect(server.output()).toMatch(/Runs: NOT confined/);
    if (mode === "auto") expect(server.output()).toMatch(/unshare: Operation not permitted/);
  });

  it("runs an admin account's workflow", async () => {
    const res = await call(server.url, adminKey, "/v1/chat/completions", { model: "workflow:hello", input: {} });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.output).toEqual({ ran: true });
  });

  it(
    mode === "auto" ? "refuses another account's run, saying how to allow it" : "runs another account's workflow, as the operator chose",
    async () => {
      const res = await call(server.url, userKey, "/v1/chat/completions", { model: "workflow:hello", input: {} });
      if (mode === "none") {
        expect(res.status, JSON.stringify(res.body)).toBe(200);
        return;
      }
      expect(res.status).toBe(400);
      expect(res.body.error.code).toBe("failed_precondition");
      expect(res.body.error.message).toContain("cannot confine runs");
      expect(res.body.error.message).toContain("SHAKER_SANDBOX=none");
    },
  );
});
