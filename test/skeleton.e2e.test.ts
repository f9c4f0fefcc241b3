import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { startTestServer, type TestServer } from "./helpers.js";

const hello = `
from shaker import WorkflowContext

def execute(ctx: WorkflowContext):
    name = (ctx.input or {}).get("name") or (ctx.messages[-1]["content"] if ctx.messages else "world")
    return {"greeting": f"Hello, {name}!", "session_id": ctx.session_id, "metadata": ctx.metadata,
            "messages": len(ctx.messages), "input": ctx.input}
`;

const boom = `
def execute(ctx):
    if (ctx.input or {}).get("answer") == 42:
        return "fine"
    raise ValueError("the answer is not 41")
`;

describe("walking skeleton over a real port", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer();
    await server.upload("hello", hello);
    await server.upload("boom", boom);
  });
  afterAll(() => server.close());

  it("invokes an uploaded workflow with the openai client and reads output and content", async () => {
    const client = new OpenAI({ apiKey: server.apiKey, baseURL: `${server.url}/v1` });
    const completion = (await client.chat.completions.create({
      model: "workflow:hello",
      messages: [{ role: "user", content: "Ada" }],
      // Extra fields of Shaker's request, passed through by the client as they are.
      ...({ session_id: "sess-e2e", metadata: { team: "core" } } as object),
    })) as OpenAI.Chat.Completions.ChatCompletion & { output: any; run_id: string; session_id: string };
    expect(completion.object).toBe("chat.completion");
    expect(completion.model).toBe("workflow:hello");
    expect(completion.output).toEqual({
      greeting: "Hello, Ada!",
      session_id: "sess-e2e",
      metadata: { team: "core" },
      messages: 1,
      input: null,
    });
    expect(JSON.parse(completion.choices[0].message.content!)).toEqual(completion.output);
    expect(completion.choices[0].finish_reason).toBe("stop");
    expect(completion.run_id).toMatch(/^run_/);
    expect(completion.session_id).toBe("sess-e2e");
  });

  it("hands input to ctx.input and answers a string output as the content itself", async () => {
    await server.upload("echo", "def execute(ctx):\n    return 'got ' + ctx.input['text']\n");
    const res = await server.invoke({ model: "workflow:echo", input: { text: "this" } });
    expect(res.status).toBe(200);
    expect(res.body.choices[0].message.content).toBe("got this");
    expect(res.body.output).toBe("got this");
    expect(res.headers.get("x-request-id")).toBe(res.body.run_id);
  });

  it("answers 401 without a key and with a wrong key", async () => {
    const none = await server.invoke({ model: "workflow:hello", input: {} }, { authorization: "" });
    expect(none.status).toBe(401);
    expect(none.body.error.type).toBe("authentication_error");
    const wrong = await server.invoke({ model: "workflow:hello", input: {} }, { authorization: "Bearer sk-nope" });
    expect(wrong.status).toBe(401);
  });

  it("answers 404 for an unknown workflow", async () => {
    const res = await server.invoke({ model: "workflow:does-not-exist", input: {} });
    expect(res.status).toBe(404);
    expect(res.body.error.message).toContain("does-not-exist");
  });

  it("answers 400 for a body with neither messages nor input", async () => {
    const res = await server.invoke({ model: "workflow:hello" });
    expect(res.status).toBe(400);
    expect(res.body.error.param).toBe("messages");
  });

  it("answers 500 with the exception's type and message when the script raises", async () => {
    const res = await server.invoke({ model: "workflow:boom", input: {} });
    expect(res.status).toBe(500);
    expect(res.body.error.code).toBe("workflow_error");
    expect(res.body.error.message).toContain("ValueError: the answer is not 41");
  });

  it("serves a Registry RPC over gRPC on HTTP/2", async () => {
    const transport = createGrpcTransport({ baseUrl: server.url });
    const registry = createClient(RegistryService, transport);
    const resp = await registry.getWorkflow({ workflowRefName: "hello" }, { headers: { authorization: `Bearer ${server.apiKey}` } });
    expect(resp.workflow?.workflowRefName).toBe("hello");
    expect(resp.workflow?.latestVersion).toBe("1.0.0");
  });

  it("serves a Registry RPC over the Connect protocol on HTTP/1.1 with a JSON body", async () => {
    const res = await fetch(`${server.url}/shaker.registry.v1.RegistryService/GetWorkflow`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${server.apiKey}` },
      body: JSON.stringify({ workflowRefName: "hello" }),
    });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.workflow.workflowRefName).toBe("hello");
    // The generated Connect client over HTTP/1.1 reaches the same handler.
    const registry = createClient(RegistryService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const list = await registry.listWorkflows({}, { headers: { authorization: `Bearer ${server.apiKey}` } });
    expect(list.workflows.map((w) => w.workflowRefName)).toContain("hello");
  });

  it("serves a Registry RPC to Python's http.client", async () => {
    const { port } = new URL(server.url);
    const script = `
import http.client, json, sys
conn = http.client.HTTPConnection("127.0.0.1", ${port})
conn.request("POST", "/shaker.registry.v1.RegistryService/GetWorkflow", body=json.dumps({"workflowRefName": "hello"}),
             headers={"Content-Type": "application/json", "Authorization": "Bearer ${server.apiKey}"})
resp = conn.getresponse()
print(json.dumps({"status": resp.status, "body": json.loads(resp.read())}))
`;
    // Asynchronously: the server under test runs in this very process.
    const { stdout } = await promisify(execFile)("python3", ["-c", script], { encoding: "utf8" });
    const out = JSON.parse(stdout);
    expect(out.status).toBe(200);
    expect(out.body.workflow.workflowRefName).toBe("hello");
  });

  it("refuses an RPC without a key with Unauthenticated", async () => {
    const res = await fetch(`${server.url}/shaker.registry.v1.RegistryService/ListWorkflows`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(res.status).toBe(401);
    expect((await res.json()).code).toBe("unauthenticated");
  });
});
