// Every workflow in examples/ uploaded with the `shaker` command and run against a real server, as
// the example's header comment tells a user to (the command runs in process: cli/main.ts's main).
// They need the local model and the datastores: without them these tests fail.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CliResult, runMain } from "./cli-process.js";
import { startTestServer, type TestServer } from "./helpers.js";

let server: TestServer;

function shaker(args: string[]): Promise<CliResult> {
  return runMain(args, { SHAKER_URL: server.url, SHAKER_API_KEY: server.apiKey });
}

async function upload(...args: string[]): Promise<void> {
  const r = await shaker(["upload", ...args]);
  expect(r.code, r.stderr).toBe(0);
}

async function invoke(body: Record<string, unknown>) {
  const res = await server.request("POST", "/v1/chat/completions", body);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body;
}

beforeAll(async () => {
  server = await startTestServer();
}, 60_000);

afterAll(async () => {
  await server?.close();
});

describe("examples/", () => {
  it("hello.py greets", async () => {
    await upload("examples/hello.py");
    const r = await shaker(["invoke", "hello", "--input", '{"name": "Ada"}']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).greeting).toBe("Hello, Ada!");
  });

  it("chat.py answers through the default model and records the call", async () => {
    await upload("examples/chat.py");
    const out = await invoke({ model: "workflow:chat", messages: [{ role: "user", content: "What is Shaker?" }] });
    expect(typeof out.output.answer).toBe("string");
    expect(out.output.answer.length).toBeGreaterThan(0);
    const run = await server.request("GET", `/v1/runs/${out.run_id}`);
    expect(run.body.data.model_calls.length).toBe(1);
    expect(run.body.data.model_calls[0].intent).toBe("chat");
  });

  it("retrieval.py answers from the faq datastore loaded from examples/data", async () => {
    expect((await shaker(["datastores", "create", "faq"])).code).toBe(0);
    const load = await shaker(["datastores", "load", "faq", "examples/data/faq.ndjson"]);
    expect(load.code, load.stderr).toBe(0);
    expect(load.stderr).toMatch(/loaded 8 records into faq/);
    await upload("examples/retrieval.py", "--datastore", "faq");
    const out = await invoke({ model: "workflow:retrieval", input: { question: "How do I stream emitted values?" } });
    expect(out.output.sources.length).toBeGreaterThan(0);
    expect(out.output.sources[0].id).toBe("stream");
    // Bad input is refused before any process starts.
    const bad = await server.request("POST", "/v1/chat/completions", { model: "workflow:retrieval", input: {} });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain("question");
  });

  it("agent.py runs a tool loop with its two tools", async () => {
    await upload("examples/agent.py");
    const out = await invoke({ model: "workflow:agent", messages: [{ role: "user", content: "What is 12.5 plus 30?" }] });
    expect(out.output.iterations).toBeGreaterThanOrEqual(1);
    expect(typeof out.output.answer).toBe("string");
    for (const name of out.output.tool_calls) expect(["add", "capital_of"]).toContain(name);
    const run = await server.request("GET", `/v1/runs/${out.run_id}`);
    expect(run.body.data.model_calls.length).toBe(out.output.iterations);
  });

  it("summarise.py streams its progress with --stream", async () => {
    await upload("examples/summarise.py", "--mode", "stream");
    const text = Array.from({ length: 60 }, (_, i) => `sentence ${i} talks about topic ${i % 5}.`).join(" ");
    const r = await shaker(["invoke", "summarise", "--stream", "--input", JSON.stringify({ text, parts: 3 })]);
    expect(r.code, r.stderr).toBe(0);
    const emitted = r.stderr
      .split("\n")
      .filter((l) => l.startsWith("» "))
      .map((l) => l.slice(2));
    expect(JSON.parse(emitted[0]!)).toEqual({ stage: "start", parts: 3 });
    expect(emitted.slice(1, 4).map((e) => JSON.parse(e).done)).toEqual([1, 2, 3]);
    expect(emitted.at(-1)).toBe("done");
    const out = JSON.parse(r.stdout);
    expect(out.parts.length).toBe(3);
    expect(typeof out.summary).toBe("string");
  });

  it("pipeline.py calls hello and chat in the same session", async () => {
    await upload("examples/hello.py");
    await upload("examples/chat.py");
    await upload("examples/pipeline.py");
    const out = await invoke({ model: "workflow:pipeline", input: { name: "Grace" }, session_id: "sess-pipeline" });
    expect(out.output.greeting).toBe("Hello, Grace!");
    expect(typeof out.output.remark).toBe("string");
    expect(out.output.session_id).toBe("sess-pipeline");
    const runs = await server.request("GET", "/v1/runs?session_id=sess-pipeline");
    const names = runs.body.data.map((r: any) => r.workflow_ref_name).sort();
    expect(names).toEqual(["chat", "hello", "pipeline"]);
    const nested = runs.body.data.filter((r: any) => r.workflow_ref_name !== "pipeline");
    for (const r of nested) expect(r.parent_run_id).toBe(out.run_id);
  });
});
