import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecutorService } from "../gen/shaker/executor/v1/executor_pb.js";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { startTestServer, type TestServer } from "./helpers.js";

async function code(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

describe("accounts: isolation, several keys, revocation", () => {
  let server: TestServer;
  let registry: Client<typeof RegistryService>;
  let executor: Client<typeof ExecutorService>;
  let keyB: string;
  let secondKeyA: string;
  let versionIdA: string;
  let runIdA: string;
  const as = (key: string) => ({ headers: { authorization: `Bearer ${key}` } });

  beforeAll(async () => {
    server = await startTestServer();
    const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
    registry = createClient(RegistryService, transport);
    executor = createClient(ExecutorService, transport);
    keyB = (await registry.createApiKey({ accountName: "tenant-b" }, as(server.apiKey))).apiKey;
    secondKeyA = (await registry.createApiKey({ accountName: "default" }, as(server.apiKey))).apiKey;
    const up = await server.upload("secret-wf", "def execute(ctx):\n    return ctx.load_accessory('plan')\n", {
      accessories: [{ key: "plan", content: { owner: "A" } }],
    });
    versionIdA = up.version_id;
    runIdA = (await server.invoke({ model: "workflow:secret-wf", input: {} })).body.run_id;
  });
  afterAll(() => server.close());

  it("lets every key of an account see the account's workflows", async () => {
    const res = await server.invoke({ model: "workflow:secret-wf", input: {} }, { authorization: `Bearer ${secondKeyA}` });
    expect(res.body.output).toEqual({ owner: "A" });
    const keys = await registry.listApiKeys({}, as(secondKeyA));
    expect(keys.keys.map((k) => k.accountName)).toEqual(["default", "default"]);
    expect(keys.keys.every((k) => k.prefix.length > 0 && !("apiKey" in k))).toBe(true);
  });

  it("answers 404 on every workflow REST endpoint for another account's workflow", async () => {
    const b = { authorization: `Bearer ${keyB}` };
    for (const [method, path, body] of [
      ["GET", "/v1/workflows/secret-wf", undefined],
      ["DELETE", "/v1/workflows/secret-wf", undefined],
      ["POST", "/v1/chat/completions", { model: "workflow:secret-wf", input: {} }],
      ["POST", "/v1/chat/completions", { model: "workflow:secret-wf@1.0.0", input: {} }],
      ["POST", "/v1/chat/completions", { model: "workflow:secret-wf", input: {}, stream: true }],
    ] as const) {
      const res = await server.request(method, path, body, b);
      expect(res.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(404);
      expect(JSON.stringify(res.body)).not.toContain("owner");
      expect(JSON.stringify(res.body)).not.toContain(versionIdA);
    }
    const list = await server.request("GET", "/v1/workflows", undefined, b);
    expect(list.body).toMatchObject({ data: [], total: 0 });
    // B may use the same name: it gets its own workflow, and A's is untouched.
    const own = await server.request(
      "POST",
      "/v1/workflows/upload",
      { workflow_ref_name: "secret-wf", script: "def execute(ctx):\n    return 'B'\n" },
      b,
    );
    expect(own.body.data).toMatchObject({ version: "1.0.0", created: true });
    expect((await server.invoke({ model: "workflow:secret-wf", input: {} }, b)).body.output).toBe("B");
    expect((await server.invoke({ model: "workflow:secret-wf", input: {} })).body.output).toEqual({ owner: "A" });
    const a = await server.request("GET", "/v1/workflows/secret-wf");
    expect(a.body.data.versions.map((v: any) => v.version)).toEqual(["1.0.0"]);
    expect(a.body.data.versions[0].version_id).toBe(versionIdA);
  });

  it("refuses every Registry RPC on another account's data", async () => {
    const b = as(keyB);
    expect(await code(registry.getWorkflow({ workflowRefName: "secret-wf" }, b))).toBe("ok"); // B's own now
    expect(await code(registry.resolveWorkflow({ versionId: versionIdA }, b))).toBe(Code.NotFound);
    expect(await code(registry.getAccessory({ versionId: versionIdA, key: "plan" }, b))).toBe(Code.NotFound);
    expect(await code(registry.listApiKeys({ accountName: "default" }, b))).toBe(Code.PermissionDenied);
    expect(await code(registry.listApiKeys({ accountName: "no-such-account" }, b))).toBe(Code.PermissionDenied);
    expect(await code(registry.listApiKeys({ allAccounts: true }, b))).toBe(Code.PermissionDenied);
    expect(await code(registry.createApiKey({ accountName: "tenant-b" }, b))).toBe(Code.PermissionDenied);
    expect(await code(registry.authenticate({ apiKey: server.apiKey }, b))).toBe(Code.PermissionDenied);
    const keysA = await registry.listApiKeys({}, as(server.apiKey));
    // Another account's key id is "not found", exactly like one that does not exist.
    expect(await code(registry.revokeApiKey({ keyId: keysA.keys[0].id }, b))).toBe(Code.NotFound);
    expect(await code(registry.revokeApiKey({ keyId: "key_does_not_exist" }, b))).toBe(Code.NotFound);
    expect(await code(executor.getRun({ runId: runIdA }, b))).toBe(Code.NotFound);
    // A's workflow and key still work.
    expect((await server.invoke({ model: "workflow:secret-wf", input: {} })).status).toBe(200);
    // Admin sees every account's keys.
    const all = await registry.listApiKeys({ allAccounts: true }, as(server.apiKey));
    expect(new Set(all.keys.map((k) => k.accountName))).toEqual(new Set(["default", "tenant-b"]));
  });

  it("refuses management RPCs made with a run's token from inside a workflow", async () => {
    const script = `
from shaker.context import REGISTRY

def execute(ctx):
    out = {}
    calls = [
        ("DeleteWorkflow", {"workflowRefName": "secret-wf"}),
        ("UploadWorkflow", {"workflowRefName": "planted", "script": "def execute(ctx):\\n    return 1"}),
        ("CreateApiKey", {"accountName": "default"}),
        ("ListApiKeys", {}),
        ("RevokeApiKey", {"keyId": "key_x"}),
        ("GetAccessory", {"versionId": ctx.input["other"], "key": "plan"}),
    ]
    for method, body in calls:
        try:
            ctx._rpc.call(REGISTRY, method, body)
            out[method] = "ok"
        except Exception as e:
            out[method] = getattr(e, "code", repr(e))
    return out
`;
    const up = await server.request(
      "POST",
      "/v1/workflows/upload",
      { workflow_ref_name: "prober", script },
      { authorization: `Bearer ${keyB}` },
    );
    expect(up.status).toBe(201);
    const res = await server.invoke({ model: "workflow:prober", input: { other: versionIdA } }, { authorization: `Bearer ${keyB}` });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.output).toEqual({
      DeleteWorkflow: "permission_denied",
      UploadWorkflow: "permission_denied",
      CreateApiKey: "permission_denied",
      ListApiKeys: "permission_denied",
      RevokeApiKey: "permission_denied",
      GetAccessory: "not_found",
    });
  });

  it("answers 401 for a revoked key (at once at the Registry, within the 2 s cache elsewhere)", async () => {
    const created = await registry.createApiKey({ accountName: "tenant-b" }, as(server.apiKey));
    const doomed = { authorization: `Bearer ${created.apiKey}` };
    expect((await server.request("GET", "/v1/workflows", undefined, doomed)).status).toBe(200);
    expect((await server.invoke({ model: "workflow:secret-wf", input: {} }, doomed)).body.output).toBe("B");
    // A non-admin may revoke its own account's keys.
    const revoked = await registry.revokeApiKey({ keyId: created.key!.id }, as(keyB));
    expect(revoked.key!.revokedAt).toBeDefined();
    const res = await server.request("GET", "/v1/workflows", undefined, doomed);
    expect(res.status).toBe(401);
    expect(res.body.error).toMatchObject({ type: "authentication_error", message: "invalid API key" });
    let invoke = await server.invoke({ model: "workflow:secret-wf", input: {} }, doomed);
    for (let i = 0; i < 40 && invoke.status !== 401; i++) {
      await new Promise((r) => setTimeout(r, 250));
      invoke = await server.invoke({ model: "workflow:secret-wf", input: {} }, doomed);
    }
    expect(invoke.status).toBe(401);
    // The account's other key is unaffected.
    expect((await server.request("GET", "/v1/workflows", undefined, { authorization: `Bearer ${keyB}` })).status).toBe(200);
  });
});
