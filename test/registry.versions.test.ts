import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecutorService } from "../gen/shaker/executor/v1/executor_pb.js";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { startTestServer, type TestServer } from "./helpers.js";

const says = (text: string) => `def execute(ctx):\n    return ${JSON.stringify(text)}\n`;

describe("immutable versions through the REST edge", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server.close());

  const output = async (model: string) => {
    const res = await server.invoke({ model, input: {} });
    return res.status === 200 ? res.body.output : `${res.status}: ${res.body.error?.message}`;
  };

  it("uploads, bumps, pins by @version, lists versions, deletes and re-uploads", async () => {
    const first = await server.upload("seq", says("one"), {
      description: "first",
      env: { MODE: "a" },
      timeout_seconds: 30,
      execution_mode: "stream",
      datastores: [{ name: "docs", write: true }],
      version_notes: "initial",
    });
    expect(first).toMatchObject({ workflow_ref_name: "seq", version: "1.0.0", created: true });
    expect(await server.upload("seq", says("two"))).toMatchObject({ version: "1.1.0", created: false });
    expect(await server.upload("seq", says("three"), { version_bump: "patch" })).toMatchObject({ version: "1.1.1" });
    expect(await server.upload("seq", says("four"), { version_bump: "major" })).toMatchObject({ version: "2.0.0" });
    // An unpublished version is stored and pinnable but is not what "workflow:seq" runs.
    expect(await server.upload("seq", says("draft"), { publish_version: false })).toMatchObject({ version: "2.1.0" });

    expect(await output("workflow:seq")).toBe("four");
    expect(await output("workflow:seq@1.0.0")).toBe("one");
    expect(await output("workflow:seq@1.1.0")).toBe("two");
    expect(await output("workflow:seq@1.1.1")).toBe("three");
    expect(await output("workflow:seq@2.1.0")).toBe("draft");
    expect(await output("workflow:seq@9.9.9")).toBe("404: workflow 'seq' has no version '9.9.9'");
    const badFormat = await server.invoke({ model: "workflow:seq@latest", input: {} });
    expect(badFormat.status).toBe(400);
    expect(badFormat.body.error.param).toBe("model");

    const got = await server.request("GET", "/v1/workflows/seq");
    expect(got.status).toBe(200);
    const wf = got.body.data;
    expect(wf).toMatchObject({ workflow_ref_name: "seq", latest_version: "2.0.0" });
    expect(wf.versions.map((v: any) => [v.version, v.published])).toEqual([
      ["2.1.0", false],
      ["2.0.0", true],
      ["1.1.1", true],
      ["1.1.0", true],
      ["1.0.0", true],
    ]);
    const v1 = wf.versions[4];
    expect(v1).toMatchObject({
      description: "first",
      env: { MODE: "a" },
      timeout_seconds: 30,
      execution_mode: "stream",
      datastores: [{ name: "docs", write: true }],
      notes: "initial",
    });
    expect(v1.script).toBeUndefined();
    expect(v1.account_id).toBeUndefined();
    expect(wf.versions[3]).toMatchObject({ timeout_seconds: 60, execution_mode: "sync", env: {} });

    // A run recorded before the delete stays readable.
    const run = await server.invoke({ model: "workflow:seq@1.0.0", input: {} });
    const del = await server.request("DELETE", "/v1/workflows/seq");
    expect(del.status).toBe(200);
    expect(del.body.data).toEqual({ workflow_ref_name: "seq", deleted: true });
    expect(await output("workflow:seq")).toMatch(/^404: /);
    expect(await output("workflow:seq@1.0.0")).toMatch(/^404: /);
    expect((await server.request("GET", "/v1/workflows/seq")).status).toBe(404);
    expect((await server.request("DELETE", "/v1/workflows/seq")).status).toBe(404);
    expect((await server.request("GET", "/v1/workflows")).body.data.map((w: any) => w.workflow_ref_name)).not.toContain("seq");
    const executor = createClient(ExecutorService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const readBack = await executor.getRun({ runId: run.body.run_id }, { headers: { authorization: `Bearer ${server.apiKey}` } });
    expect(readBack.run).toMatchObject({ workflowRefName: "seq", version: "1.0.0" });

    // The name is free again: a new workflow, starting at 1.0.0.
    expect(await server.upload("seq", says("reborn"))).toMatchObject({ version: "1.0.0", created: true });
    expect(await output("workflow:seq")).toBe("reborn");
    expect(await output("workflow:seq@2.0.0")).toMatch(/^404: /);
    const again = await server.request("GET", "/v1/workflows/seq");
    expect(again.body.data.versions.map((v: any) => v.version)).toEqual(["1.0.0"]);
  });

  it("runs what was uploaded last, from the next invoke on (a workflow resolved before is not kept past a write)", async () => {
    await server.upload("live", says("one"));
    expect(await output("workflow:live")).toBe("one");
    expect(await output("workflow:live")).toBe("one");
    await server.upload("live", says("two"));
    expect(await output("workflow:live")).toBe("two");
    // An unpublished upload leaves the latest as it was; pinned versions stay what they were.
    await server.upload("live", says("draft"), { publish_version: false });
    expect(await output("workflow:live")).toBe("two");
    expect(await output("workflow:live@1.0.0")).toBe("one");
    expect(await output("workflow:live@1.2.0")).toBe("draft");
    // Another account's workflow of the same name is its own.
    const registry = createClient(RegistryService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const { apiKey } = await registry.createApiKey(
      { accountName: "other-live" },
      { headers: { authorization: `Bearer ${server.apiKey}` } },
    );
    const other = { authorization: `Bearer ${apiKey}` };
    expect((await server.invoke({ model: "workflow:live", input: {} }, other)).status).toBe(404);
    const upload = await server.request("POST", "/v1/workflows/upload", { workflow_ref_name: "live", script: says("theirs") }, other);
    expect(upload.status).toBe(201);
    expect((await server.invoke({ model: "workflow:live", input: {} }, other)).body.output).toBe("theirs");
    expect(await output("workflow:live")).toBe("two");
    await server.request("DELETE", "/v1/workflows/live");
    expect(await output("workflow:live")).toMatch(/^404: /);
    expect((await server.invoke({ model: "workflow:live", input: {} }, other)).body.output).toBe("theirs");
  });

  it("refuses malformed upload fields with 400 naming the field, storing nothing", async () => {
    const bad: [Record<string, unknown>, string | null, RegExp][] = [
      [{ workflow_ref_name: "Bad Name", script: says("x") }, "workflow_ref_name", /workflow_ref_name must match/],
      [{ workflow_ref_name: "ok-name", script: "   " }, "script", /script is required/],
      [{ workflow_ref_name: "ok-name" }, "script", /'script' is required/],
      [{ workflow_ref_name: "ok-name", script: says("x"), version_bump: "huge" }, "version_bump", /major, minor, patch/],
      [{ workflow_ref_name: "ok-name", script: says("x"), execution_mode: "later" }, "execution_mode", /sync, stream, async/],
      [
        { workflow_ref_name: "ok-name", script: says("x"), timeout_seconds: 99999 },
        "timeout_seconds",
        /timeout_seconds must be between 1 and 3600/,
      ],
      [{ workflow_ref_name: "ok-name", script: says("x"), env: { A: 1 } }, "env.A", /must be a string/],
      [{ workflow_ref_name: "ok-name", script: says("x"), env: { "A=B": "1" } }, "env.A=B", /env name 'A=B' must match/],
      [
        { workflow_ref_name: "ok-name", script: says("x"), datastores: [{ name: "x", write: "yes" }] },
        "datastores[0].write",
        /true or false/,
      ],
      [{ workflow_ref_name: "ok-name", script: says("x"), publish_version: "no" }, "publish_version", /true or false/],
    ];
    for (const [body, param, message] of bad) {
      const res = await server.request("POST", "/v1/workflows/upload", body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.body.error.message).toMatch(message);
      if (param) expect(res.body.error.param).toBe(param);
    }
    expect((await server.request("GET", "/v1/workflows/ok-name")).status).toBe(404);
    const malformed = await server.request("POST", "/v1/workflows/upload", "{not json");
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe("invalid_json");
  });

  it("lists workflows newest first with offset and limit (at most 100), in the {data} envelope", async () => {
    for (const ref of ["page-a", "page-b", "page-c"]) await server.upload(ref, says(ref));
    const all = await server.request("GET", "/v1/workflows");
    expect(all.status).toBe(200);
    const refs = all.body.data.map((w: any) => w.workflow_ref_name);
    expect(refs.slice(0, 3)).toEqual(["page-c", "page-b", "page-a"]);
    expect(all.body.total).toBe(refs.length);
    expect(all.body.data[0]).toMatchObject({ workflow_ref_name: "page-c", latest_version: "1.0.0" });
    expect(all.body.data[0].versions).toBeUndefined();

    const page = await server.request("GET", "/v1/workflows?offset=1&limit=1");
    expect(page.body.data.map((w: any) => w.workflow_ref_name)).toEqual(["page-b"]);
    expect(page.body).toMatchObject({ offset: 1, limit: 1, total: refs.length });
    const past = await server.request("GET", `/v1/workflows?offset=${refs.length}`);
    expect(past.body.data).toEqual([]);

    for (const q of ["limit=101", "limit=abc", "offset=-1", "limit=1.5"]) {
      const res = await server.request("GET", `/v1/workflows?${q}`);
      expect(res.status, q).toBe(400);
      expect(res.body.error.param).toBe(q.split("=")[0]);
    }
  });

  it("enforces the stored INPUT_SCHEMA at invoke: 400 naming the field and the type", async () => {
    await server.upload(
      "typed",
      `INPUT_SCHEMA = {"query": {"type": "string", "required": True}, "n": {"type": "number"}}\n\ndef execute(ctx):\n    return ctx.input\n`,
    );
    const got = await server.request("GET", "/v1/workflows/typed");
    expect(got.body.data.versions[0].input_schema).toEqual({ query: { type: "string", required: true }, n: { type: "number" } });
    const missing = await server.invoke({ model: "workflow:typed", input: { n: 1 } });
    expect(missing.status).toBe(400);
    expect(missing.body.error.message).toContain("query");
    const wrong = await server.invoke({ model: "workflow:typed", input: { query: "q", n: "one" } });
    expect(wrong.status).toBe(400);
    expect(wrong.body.error.message).toMatch(/n.*number/);
    const ok = await server.invoke({ model: "workflow:typed", input: { query: "q", n: 2 } });
    expect(ok.body.output).toEqual({ query: "q", n: 2 });
  });

  it("answers a missing workflow in OpenAI's error shape", async () => {
    const res = await server.request("GET", "/v1/workflows/nothing-here");
    expect(res.status).toBe(404);
    expect(res.body).toEqual({
      error: { message: "workflow 'nothing-here' not found", type: "invalid_request_error", param: null, code: "not_found" },
    });
    expect((await server.request("GET", "/v1/workflows/NOT%20valid")).status).toBe(404);
  });
});
