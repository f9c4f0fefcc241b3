// Split mode: the services in separate processes (registry + modelproxy + datastore, an executor,
// an edge), each with its own data directory, reaching each other over HTTP/2 with a shared
// secret. A workflow that calls a model, a datastore and a nested run is invoked through the edge
// with the real openai client; a run's token is refused by the other processes once its run ended.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FakeUpstream, startFakeUpstream, writeFakeModelsConfig } from "../fake-upstream.js";
import { freePort, type ServerProcess, startServerProcess, stopServerProcess } from "./process.js";

const key = "sk-shaker-split-test";
const secret = "split-test-service-secret-0123456789";

const workflow = `
def execute(ctx):
    said = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "split " + ctx.input["tag"]}])
    ctx.datastore.upsert("notes", [{"id": ctx.input["tag"], "text": "kept"}])
    found = ctx.datastore.get("notes", ctx.input["tag"])
    child = ctx.workflows.run("split-child", input={"n": 2})
    ctx.emit("done")
    return {"said": said["choices"][0]["message"]["content"], "found": found["text"], "child": child,
            "token": ctx._rpc._token, "url": ctx._rpc._socket}
`;

describe("split mode: services in separate processes", () => {
  let upstream: FakeUpstream;
  const dir = mkdtempSync(join(tmpdir(), "shaker-split-"));
  const servers: ServerProcess[] = [];
  let edgeUrl = "";
  let coreUrl = "";

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const [corePort, executorPort, edgePort, edge2Port] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const urls = { core: `http://127.0.0.1:${corePort}`, executor: `http://127.0.0.1:${executorPort}` };
    const common = { SHAKER_SERVICE_SECRET: secret, SHAKER_SANDBOX: "none" };
    const peers = {
      SHAKER_REGISTRY_URL: urls.core,
      SHAKER_MODELPROXY_URL: urls.core,
      SHAKER_DATASTORE_URL: urls.core,
      SHAKER_EXECUTOR_URL: urls.executor,
    };
    const start = (name: string, port: number, services: string, extra: Record<string, string> = {}) =>
      startServerProcess({
        ...common,
        ...peers,
        ...extra,
        SHAKER_SERVICES: services,
        PORT: String(port),
        SHAKER_DATA_DIR: join(dir, name),
      });
    servers.push(
      await start("core", corePort, "registry,modelproxy,datastore", {
        SHAKER_API_KEY: key,
        SHAKER_MODELS_CONFIG: writeFakeModelsConfig(dir, upstream, {}),
      }),
    );
    servers.push(await start("executor", executorPort, "executor", { SHAKER_EXECUTOR_ID: "exec-1" }));
    servers.push(await start("edge", edgePort, "edge"));
    servers.push(await start("edge2", edge2Port, "edge"));
    coreUrl = urls.core;
    edgeUrl = servers[2].url;
    expect(servers[1].output()).toContain("Services: executor");
  });
  afterAll(async () => {
    for (const s of servers) await stopServerProcess(s, "SIGTERM");
    await upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function api(base: string, method: string, path: string, body?: unknown, auth = key) {
    const res = await fetch(base + path, {
      method,
      headers: { authorization: `Bearer ${auth}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json().catch(() => undefined)) as any };
  }

  it("uploads and invokes through the edge, the run calling every other process", async () => {
    expect((await api(edgeUrl, "POST", "/v1/datastores", { name: "notes" })).status).toBe(201);
    for (const [ref, script, extra] of [
      ["split-main", workflow, { datastores: [{ name: "notes", write: true }] }],
      ["split-child", "def execute(ctx):\n    return ctx.input['n'] * 21\n", {}],
    ] as const) {
      expect((await api(edgeUrl, "POST", "/v1/workflows/upload", { workflow_ref_name: ref, script, ...extra })).status).toBe(201);
    }
    const client = new OpenAI({ apiKey: key, baseURL: `${edgeUrl}/v1` });
    const completion = await client.chat.completions.create({
      model: "workflow:split-main",
      messages: [{ role: "user", content: "go" }],
      ...({ input: { tag: "t1" } } as object),
    });
    const output = (completion as any).output;
    expect(output).toMatchObject({ said: "Echo: split t1", found: "kept", child: 42 });
    // The run reached the other processes through its executor's socket.
    expect(output.url).toMatch(/\.sock$/);

    // Streaming through the edge too.
    const stream = await client.chat.completions.create({
      model: "workflow:split-main",
      messages: [{ role: "user", content: "go" }],
      stream: true,
      ...({ input: { tag: "t2" } } as object),
    });
    const emitted: unknown[] = [];
    for await (const chunk of stream) if ((chunk as any).emitted !== undefined) emitted.push((chunk as any).emitted);
    expect(emitted).toEqual(["done"]);

    // Records live with their services: the run on the executor, the model call on the modelproxy.
    const run = await api(edgeUrl, "GET", `/v1/runs/${(completion as any).run_id}`);
    expect(run.body.data.status).toBe("succeeded");
    expect(run.body.data.executor).toBe("exec-1");
    expect(run.body.data.model_calls).toHaveLength(1);

    // Once the run ended, its token is refused by the services of the other process (within a second).
    await new Promise((r) => setTimeout(r, 1500));
    const res = await fetch(`${coreUrl}/shaker.modelproxy.v1.ModelProxyService/ListModels`, {
      method: "POST",
      headers: { authorization: `Bearer ${output.token}`, "content-type": "application/json" },
      body: "{}",
    });
    expect(res.status).toBe(401);
    expect(await res.text()).toContain("has ended");
  });

  it("serves a new version from every edge at once, and refuses a revoked key on every edge within 2 s", async () => {
    const edge2 = servers[3].url;
    const script = (n: number) => `def execute(ctx):\n    return ${n}\n`;
    for (const n of [1, 2]) {
      expect((await api(edgeUrl, "POST", "/v1/workflows/upload", { workflow_ref_name: "versioned", script: script(n) })).status).toBe(201);
      const res = await api(edge2, "POST", "/v1/chat/completions", { model: "workflow:versioned", input: {} });
      expect(res.body.output).toBe(n);
    }
    const rpc = (method: string, body: unknown) => api(coreUrl, "POST", `/shaker.registry.v1.RegistryService/${method}`, body);
    const created = await rpc("CreateApiKey", { accountName: "default" });
    expect(created.status).toBe(200);
    const other = created.body.apiKey as string;
    expect((await api(edge2, "GET", "/v1/workflows", undefined, other)).status).toBe(200);
    expect((await rpc("RevokeApiKey", { keyId: created.body.key.id })).status).toBe(200);
    const revokedAt = Date.now();
    let status = 200;
    while (status === 200 && Date.now() - revokedAt < 5000) {
      status = (await api(edge2, "GET", "/v1/workflows", undefined, other)).status;
      if (status === 200) await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toBe(401);
    expect(Date.now() - revokedAt).toBeLessThan(2500);
  });

  it("refuses the services' own calls without the shared secret", async () => {
    const res = await fetch(`${servers[1].url}/shaker.executor.v1.ExecutorService/CheckRun`, {
      method: "POST",
      headers: { "x-shaker-service-token": "not-the-secret", "content-type": "application/json" },
      body: JSON.stringify({ runId: "run_x" }),
    });
    expect(res.status).toBe(401);
    const withKey = await api(servers[1].url, "POST", "/shaker.executor.v1.ExecutorService/CheckRun", { runId: "run_x" });
    expect(withKey.status).toBe(403);
  });

  it("will not start a service whose peers it cannot name, or without the secret", async () => {
    const port = String(await freePort());
    await expect(
      startServerProcess({ SHAKER_SERVICES: "edge", PORT: port, SHAKER_DATA_DIR: join(dir, "bad1"), SHAKER_SERVICE_SECRET: secret }),
    ).rejects.toThrow(/SHAKER_REGISTRY_URL is required/);
    await expect(
      startServerProcess({
        SHAKER_SERVICES: "executor",
        PORT: port,
        SHAKER_DATA_DIR: join(dir, "bad2"),
        SHAKER_REGISTRY_URL: coreUrl,
        SHAKER_MODELPROXY_URL: coreUrl,
        SHAKER_DATASTORE_URL: coreUrl,
      }),
    ).rejects.toThrow(/SHAKER_SERVICE_SECRET is required/);
  });
});
