import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import Database from "better-sqlite3";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { localEmbedding } from "../services/modelproxy/local.js";
import { createRecorder } from "../services/modelproxy/recorder.js";
import { createModelProxyStore, encodeCall } from "../services/modelproxy/store.js";
import { freshDatabase, testDialect, testStoreLocation } from "./databases.js";
import { type FakeUpstream, startFakeUpstream } from "./fake-upstream.js";
import { startTestServer, type TestServer } from "./helpers.js";

const cosine = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0);

describe("the built-in local model, offline", () => {
  let server: TestServer;
  let client: OpenAI;

  beforeAll(async () => {
    server = await startTestServer();
    client = new OpenAI({ apiKey: server.apiKey, baseURL: `${server.url}/v1`, maxRetries: 0 });
  });
  afterAll(() => server.close());

  it("answers deterministically, named shaker-local, for any model name", async () => {
    const ask = () => client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "What is Shaker?" }] });
    const [a, b] = [await ask(), await ask()];
    expect(a.model).toBe("shaker-local");
    expect(a.choices[0].message.content).toContain("You said: What is Shaker?");
    expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
    expect(a.usage!.completion_tokens).toBe(a.choices[0].message.content!.split(" ").length);
  });

  it("honours max_tokens", async () => {
    const c = await client.chat.completions.create({
      model: "shaker-local",
      max_tokens: 3,
      messages: [{ role: "user", content: "a long question indeed" }],
    });
    expect(c.choices[0].message.content!.split(" ")).toHaveLength(3);
    expect(c.choices[0].finish_reason).toBe("length");
  });

  it("streams word by word, the same text as the plain answer", async () => {
    const messages = [{ role: "user" as const, content: "stream me" }];
    const plain = await client.chat.completions.create({ model: "shaker-local", messages });
    const stream = await client.chat.completions.create({
      model: "shaker-local",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    const parts: string[] = [];
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) parts.push(chunk.choices[0].delta.content);
      if (chunk.usage) usage = chunk.usage;
    }
    expect(parts.join("")).toBe(plain.choices[0].message.content);
    expect(parts.length).toBe(plain.choices[0].message.content!.split(" ").length);
    expect(usage?.completion_tokens).toBe(parts.length);
  });

  it("retrieves one model, a workflow or a proxied one, and answers 404 for a name it does not have", async () => {
    await server.upload("retrievable", "def execute(ctx):\n    return 1\n");
    const workflow = await client.models.retrieve("workflow:retrievable");
    expect(workflow).toMatchObject({ id: "workflow:retrievable", object: "model", owned_by: "workflow" });
    expect((await client.models.retrieve("shaker-local")).id).toBe("shaker-local");
    for (const id of ["workflow:no-such-workflow", "no-such-model", "workflow:Not A Name"]) {
      await expect(client.models.retrieve(id), id).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    }
  });

  it("ends a stream with the usage chunk only when the caller asked for it, as OpenAI does", async () => {
    const messages = [{ role: "user" as const, content: "count my chunks" }];
    // The OpenAI quickstart's loop: it reads choices[0] of every chunk.
    const quickstart = await client.chat.completions.create({ model: "shaker-local", messages, stream: true });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const chunk of quickstart) chunks.push(chunk);
    expect(chunks.length).toBeGreaterThan(1);
    for (const chunk of chunks) expect(chunk.choices[0]).toBeDefined();
    const asked = await client.chat.completions.create({
      model: "shaker-local",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    const withUsage: OpenAI.ChatCompletionChunk[] = [];
    for await (const chunk of asked) withUsage.push(chunk);
    expect(withUsage.at(-1)!.choices).toEqual([]);
    expect(withUsage.at(-1)!.usage!.total_tokens).toBeGreaterThan(0);
    // A workflow written for the hosted product reads chunk["choices"][0] too, and its run still counts the call's usage.
    await server.upload(
      "reads-chunks",
      'def execute(ctx):\n    parts = [c["choices"][0]["delta"].get("content") or "" for c in ctx.chat.completions.create(stream=True)]\n    return "".join(parts)\n',
    );
    const res = await server.invoke({ model: "workflow:reads-chunks", messages });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.output).toContain("You said: count my chunks");
    expect(res.body.usage.total_tokens).toBeGreaterThan(0);
  });

  it("calls the first tool with arguments from its schema, then answers once the tool result is in", async () => {
    const tools = [
      {
        type: "function" as const,
        function: {
          name: "get_weather",
          parameters: { type: "object", properties: { city: { type: "string" }, days: { type: "integer" } }, required: ["city", "days"] },
        },
      },
    ];
    const first = await client.chat.completions.create({ model: "x", messages: [{ role: "user", content: "Paris for 3 days" }], tools });
    const call = first.choices[0].message.tool_calls![0] as OpenAI.Chat.ChatCompletionMessageFunctionToolCall;
    expect(first.choices[0].finish_reason).toBe("tool_calls");
    expect(call.function.name).toBe("get_weather");
    expect(JSON.parse(call.function.arguments)).toEqual({ city: "Paris for 3 days", days: 3 });
    const second = await client.chat.completions.create({
      model: "x",
      tools,
      messages: [
        { role: "user", content: "Paris for 3 days" },
        { role: "assistant", content: null, tool_calls: [call] },
        { role: "tool", tool_call_id: call.id, content: "sunny" },
      ],
    });
    expect(second.choices[0].message.tool_calls).toBeUndefined();
    expect(second.choices[0].message.content).toBe("The tool returned: sunny");
  });

  it("embeds by feature hashing: 384 unit-length dimensions where shared words mean similar vectors", async () => {
    const resp = await client.embeddings.create({
      model: "shaker-local",
      input: ["red apples are sweet", "sweet red apples", "the deep blue ocean"],
    });
    const [a, b, c] = resp.data.map((d) => d.embedding);
    expect(a).toHaveLength(384);
    expect(cosine(a, a)).toBeCloseTo(1, 5);
    expect(cosine(a, b)).toBeGreaterThan(0.5);
    expect(cosine(a, b)).toBeGreaterThan(cosine(a, c) + 0.3);
    expect(localEmbedding("Red apples!")).toEqual(localEmbedding("red apples"));
    const floats = await server.request("POST", "/v1/embeddings", { input: "hello", encoding_format: "float" });
    expect(floats.body.data[0].embedding).toHaveLength(384);
    expect(floats.body.model).toBe("shaker-local");
  });
});

const agentScript = `
from shaker import WorkflowContext

def lookup(topic: str) -> str:
    """Looks a topic up."""
    return "facts about " + topic

def execute(ctx: WorkflowContext):
    key = ctx.secrets["api_key"]
    msgs = [{"role": "user", "content": "my key is " + key + " keep it"}]
    plain = ctx.chat.completions.create(messages=msgs, intent="answer", max_tokens=50)
    streamed = "".join((c["choices"][0]["delta"].get("content") or "") for c in ctx.chat.completions.create(messages=msgs, stream=True) if c.get("choices"))
    emb = ctx.embeddings.create(input=["one", "two"])
    agent = ctx.agents.run(messages=[{"role": "user", "content": "shaker"}], tools=[lookup])
    # A forged context: the run token's own run and session must win.
    forged = ctx._rpc.call("shaker.modelproxy.v1.ModelProxyService", "ChatCompletion",
        {"body": {"messages": [{"role": "user", "content": "forged"}]}, "context": {"sessionId": "other", "runId": "run_other"}})
    return {"plain": plain["choices"][0]["message"]["content"], "streamed": streamed,
            "dims": len(emb["data"][0]["embedding"]), "agent": agent["content"], "iterations": agent["iterations"],
            "forged_model": forged["completion"]["model"]}
`;

describe("workflows calling models through the ModelProxy", () => {
  let upstream: FakeUpstream;
  let dir: string;
  let server: TestServer;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    dir = mkdtempSync(join(tmpdir(), "shaker-models-"));
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.close();
    await upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("records every call of a run under its session and run, with the run's secrets absent from the stored bodies", async () => {
    await server.upload("agent", agentScript);
    const secret = 'sk-very-"secret"-value-123'; // quotes: JSON escapes them, redaction must not miss it
    const res = await server.invoke({ model: "workflow:agent", input: {}, session_id: "sess-wf", secrets: { api_key: secret } });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const out = res.body.output;
    expect(out.plain).toContain(`my key is ${secret}`); // the model saw it: only the record is redacted
    expect(out.streamed).toBe(out.plain);
    expect(out.dims).toBe(384);
    expect(out.agent).toBe("The tool returned: facts about shaker");
    expect(out.iterations).toBe(2);
    expect(res.body.usage.total_tokens).toBeGreaterThan(0);

    const session = await server.request("GET", "/v1/sessions/sess-wf");
    expect(session.status).toBe(200);
    const items = session.body.data.items as any[];
    expect(items[0].type).toBe("run");
    expect(items[0].run_id).toBe(res.body.run_id);
    const calls = items.filter((i) => i.type === "model_call");
    expect(calls.map((c) => c.kind)).toEqual(["chat", "chat_stream", "embeddings", "chat", "chat", "chat"]);
    for (const c of calls) {
      expect(c.run_id).toBe(res.body.run_id);
      expect(c.session_id).toBe("sess-wf");
      expect(c.workflow_ref_name).toBe("agent");
      expect(c.status).toBe("ok");
    }
    expect(calls[0].intent).toBe("answer");
    const times = items.map((i) => Date.parse(i.time));
    expect([...times].sort((a, b) => a - b)).toEqual(times);

    const proxy = createClient(ModelProxyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const { calls: stored } = await proxy.listCalls(
      { runId: res.body.run_id, includeBodies: true },
      { headers: { authorization: `Bearer ${server.apiKey}` } },
    );
    expect(stored).toHaveLength(6);
    const text = JSON.stringify(stored.map((c) => [c.request, c.response, c.error]));
    expect(text).toContain("my key is [REDACTED] keep it");
    expect(text).not.toContain(JSON.stringify(secret).slice(1, -1));
    expect(text).not.toContain("secret");
    expect(JSON.stringify(stored[1].response)).toContain("[REDACTED]");
  });

  it("refuses a malformed models config at start with a message naming the field", async () => {
    const file = join(dir, "bad.json");
    writeFileSync(file, JSON.stringify({ models: { m: { provider: "nowhere" } } }));
    await expect(startTestServer({ modelsConfigFile: file })).rejects.toThrow(/models\.m\.provider/);
    writeFileSync(file, "{not json");
    await expect(startTestServer({ modelsConfigFile: file })).rejects.toThrow(/not valid JSON/);
  });

  it("uses OPENAI_BASE_URL as the default upstream and counts an empty OPENAI_API_KEY as unset", async () => {
    const s = await startTestServer({}, { OPENAI_BASE_URL: upstream.url, OPENAI_API_KEY: "" });
    try {
      const res = await s.invoke({ model: "gpt-test", messages: [{ role: "user", content: "hi" }] });
      expect(res.status).toBe(200);
      expect(res.body.choices[0].message.content).toBe("Echo: hi");
      expect(upstream.requests.at(-1)!.body.model).toBe("gpt-test");
      const none = await s.invoke({ model: "", messages: [{ role: "user", content: "hi" }] });
      expect(none.body.model).toBe("gpt-4o-mini");
    } finally {
      await s.close();
    }
  });

  it("writes pending call records on close", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "shaker-flush-"));
    // Both servers keep their tables in one place: the data directory, or one PostgreSQL database.
    const database = testDialect === "postgresql" ? await freshDatabase() : undefined;
    const where = { dataDir, ...(database ? { databaseUrl: database.url } : {}) };
    try {
      const first = await startTestServer(where);
      const res = await first.invoke({ model: "m", messages: [{ role: "user", content: "hi" }], session_id: "s-close" });
      expect(res.status).toBe(200);
      await first.close();
      const second = await startTestServer(where);
      try {
        const session = await second.request("GET", "/v1/sessions/s-close");
        expect(session.status).toBe(200);
        expect(session.body.data.model_calls).toBe(1);
      } finally {
        await second.close();
      }
    } finally {
      await database?.drop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it("answers 404 for a session with nothing in it", async () => {
    const res = await server.request("GET", "/v1/sessions/nothing-here");
    expect(res.status).toBe(404);
  });
});

/** callRow is a minimal call record of account "a". */
function callRow(id: string, createdAt = Date.now()) {
  return {
    id,
    accountId: "a",
    sessionId: "s",
    runId: "",
    workflowRefName: "",
    intent: "",
    application: "",
    kind: "chat",
    model: "m",
    provider: "p",
    attempts: 1,
    status: "ok",
    error: "",
    latencyMs: 1,
    ttftMs: 0,
    promptTokens: 0,
    completionTokens: 0,
    createdAt,
  };
}

describe("the call recorder", () => {
  it("counts records it drops when the queue is full or the store refuses them, and writes a call once", async () => {
    const database = await testStoreLocation();
    const store = await createModelProxyStore(database.location);
    const recorder = createRecorder(store, { maxPending: 2, flushMs: 60_000 });
    const row = callRow;
    const ids = async () => (await store.listCalls({ accountId: "a", offset: 0, limit: 10 })).map((r) => r.id);
    try {
      recorder.push(row("1", 1));
      recorder.push(row("2", 2));
      recorder.push(row("3", 3));
      expect(recorder.counters()).toEqual({ recorded: 0, pending: 2, dropped: 1 });
      const flushed = recorder.flush();
      // Records being written still count against the bound.
      recorder.push(row("4", 4));
      expect(recorder.counters()).toEqual({ recorded: 0, pending: 2, dropped: 2 });
      await flushed;
      expect(recorder.counters()).toEqual({ recorded: 2, pending: 0, dropped: 2 });
      expect(await ids()).toEqual(["1", "2"]);
      // A call written again keeps its first record.
      recorder.push({ ...row("1", 1), model: "again" });
      recorder.push(row("5", 5));
      await recorder.flush();
      expect(await ids()).toEqual(["1", "2", "5"]);
      expect((await store.listCalls({ accountId: "a", offset: 0, limit: 1 }))[0].model).toBe("m");
    } finally {
      await store.close();
    }
    const stderr = process.stderr.write;
    process.stderr.write = () => true;
    try {
      recorder.push(row("6"));
      await recorder.flush();
    } finally {
      process.stderr.write = stderr;
      await database.release();
    }
    expect(recorder.counters()).toEqual({ recorded: 4, pending: 0, dropped: 3 });
  });

  it("writes a full batch at once, without waiting for the flush interval", async () => {
    const database = await testStoreLocation();
    const store = await createModelProxyStore(database.location);
    const recorder = createRecorder(store, { batchSize: 3, flushMs: 60_000 });
    try {
      recorder.push(callRow("1", 1));
      recorder.push(callRow("2", 2));
      expect(recorder.counters()).toEqual({ recorded: 0, pending: 2, dropped: 0 });
      recorder.push(callRow("3", 3));
      recorder.push(callRow("4", 4));
      // The third record filled the batch: it is written now; the fourth waits for the next.
      await vi.waitFor(() => expect(recorder.counters().recorded).toBe(3));
      expect(recorder.counters()).toEqual({ recorded: 3, pending: 1, dropped: 0 });
      expect((await store.listCalls({ accountId: "a", offset: 0, limit: 10 })).map((r) => r.id)).toEqual(["1", "2", "3"]);
      await recorder.flush();
      expect(recorder.counters()).toEqual({ recorded: 4, pending: 0, dropped: 0 });
    } finally {
      await store.close();
      await database.release();
    }
  });

  it.runIf(testDialect === "sqlite")("writes records on a SQLite file from a thread of its own, never the event loop", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shaker-calls-"));
    const file = join(dir, "modelproxy.db");
    const store = await createModelProxyStore(file);
    // Another connection holds the file's write lock: a write on this thread would wait here for the
    // busy timeout (5 s), then fail with SQLITE_BUSY; the writer thread waits instead, and writes once
    // the lock is released.
    const holder = new Database(file);
    holder.exec("BEGIN IMMEDIATE");
    try {
      const row = (id: string) => ({ ...callRow(id), request: { messages: [{ role: "user", content: "hi" }] } });
      const written = store.insertCalls([row("a"), row("b")].map(encodeCall));
      await new Promise((r) => setTimeout(r, 100));
      expect((holder.prepare("SELECT count(*) AS n FROM calls").get() as { n: number }).n).toBe(0);
      holder.exec("COMMIT");
      await written;
      expect((await store.listCalls({ accountId: "a", offset: 0, limit: 10 })).map((r) => [r.id, r.request])).toEqual([
        ["a", { messages: [{ role: "user", content: "hi" }] }],
        ["b", { messages: [{ role: "user", content: "hi" }] }],
      ]);
    } finally {
      if (holder.inTransaction) holder.exec("ROLLBACK");
      holder.close();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
    // A closed store's writer refuses, with a clear error.
    await expect(store.insertCalls([encodeCall(callRow("c"))])).rejects.toThrow(/call writer thread/);
  });
});
