import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { type FakeUpstream, startFakeUpstream, writeFakeModelsConfig } from "./fake-upstream.js";
import { startTestServer, type TestServer } from "./helpers.js";

describe("ModelProxy behind a fake OpenAI-compatible upstream", () => {
  let upstream: FakeUpstream;
  let server: TestServer;
  let client: OpenAI;
  let proxy: ReturnType<typeof createClient<typeof ModelProxyService>>;
  let dir: string;
  const auth = () => ({ headers: { authorization: `Bearer ${server.apiKey}` } });
  const lastCall = async (sessionId: string) => {
    const { calls } = await proxy.listCalls({ sessionId, includeBodies: true }, auth());
    return calls[calls.length - 1];
  };

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    dir = mkdtempSync(join(tmpdir(), "shaker-models-"));
    const file = writeFakeModelsConfig(dir, upstream, { intents: { answer: ["primary"] }, applications: { support: "backup" } });
    server = await startTestServer({ modelsConfigFile: file });
    client = new OpenAI({ apiKey: server.apiKey, baseURL: `${server.url}/v1`, maxRetries: 0 });
    proxy = createClient(ModelProxyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  });
  afterAll(async () => {
    await server?.close();
    await upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("proxies a plain completion through the edge with the openai client and records it", async () => {
    const completion = await client.chat.completions.create({
      model: "m-plain",
      messages: [{ role: "user", content: "hello there" }],
      ...({ session_id: "s-plain" } as object),
    });
    expect(completion.choices[0].message.content).toBe("Echo: hello there");
    expect(completion.model).toBe("m-plain");
    const sent = upstream.requests.at(-1)!;
    expect(sent.body.model).toBe("m-plain");
    expect(sent.body.session_id).toBeUndefined();
    expect(sent.headers.authorization).toBe("Bearer sk-upstream");
    const call = await lastCall("s-plain");
    expect(call).toMatchObject({
      kind: "chat",
      model: "m-plain",
      provider: "fake",
      attempts: 1,
      status: "ok",
      accountId: expect.any(String),
    });
    expect(call.promptTokens).toBeGreaterThan(0);
    expect(call.completionTokens).toBe(3);
    expect(call.response?.choices).toBeDefined();
  });

  it("streams chunks through the edge, asks upstream for usage, and records usage and time to first token", async () => {
    const stream = await client.chat.completions.create({
      model: "m-stream",
      messages: [{ role: "user", content: "one two three four" }],
      stream: true,
      ...({ session_id: "s-stream" } as object),
    });
    const deltas: string[] = [];
    for await (const chunk of stream) deltas.push(chunk.choices[0]?.delta?.content ?? "");
    expect(deltas.join("")).toBe("Echo: one two three four");
    expect(deltas.filter(Boolean).length).toBe(5);
    expect(upstream.requests.at(-1)!.body.stream_options).toEqual({ include_usage: true });
    const call = await lastCall("s-stream");
    expect(call).toMatchObject({ kind: "chat_stream", status: "ok", completionTokens: 5 });
    expect(call.ttftMs).toBeGreaterThan(0);
    expect(call.latencyMs).toBeGreaterThanOrEqual(call.ttftMs);
    expect((call.response as any).choices[0].message.content).toBe("Echo: one two three four");
  });

  it("passes tool calls through, plain and streamed", async () => {
    const tools = [
      {
        type: "function" as const,
        function: { name: "search", parameters: { type: "object", properties: { query: { type: "string" } } } },
      },
    ];
    const plain = await client.chat.completions.create({ model: "m-tools", messages: [{ role: "user", content: "find" }], tools });
    expect(plain.choices[0].finish_reason).toBe("tool_calls");
    expect(plain.choices[0].message.tool_calls?.[0]).toMatchObject({ id: "call_fake_1", function: { name: "search" } });
    const stream = await client.chat.completions.create({
      model: "m-tools",
      messages: [{ role: "user", content: "find" }],
      tools,
      stream: true,
      ...({ session_id: "s-tools" } as object),
    });
    let args = "";
    for await (const chunk of stream) args += chunk.choices[0]?.delta?.tool_calls?.[0]?.function?.arguments ?? "";
    expect(JSON.parse(args)).toEqual({ query: "fake" });
    const call = await lastCall("s-tools");
    expect((call.response as any).choices[0].message.tool_calls[0].function).toEqual({ name: "search", arguments: '{"query":"fake"}' });
  });

  it("retries a 429 and then succeeds, recording both attempts", async () => {
    upstream.plan("m-retry", [{ status: 429, retryAfter: 0 }]);
    const completion = await client.chat.completions.create({
      model: "m-retry",
      messages: [{ role: "user", content: "again" }],
      ...({ session_id: "s-retry" } as object),
    });
    expect(completion.choices[0].message.content).toBe("Echo: again");
    const call = await lastCall("s-retry");
    expect(call.attempts).toBe(2);
    expect(call.status).toBe("ok");
  });

  it("falls back to the next model when the first answers 500 on every attempt", async () => {
    upstream.plan("m-primary", [{ status: 500 }, { status: 502 }, { status: 503 }]);
    const completion = await client.chat.completions.create({
      model: "primary",
      messages: [{ role: "user", content: "fall" }],
      ...({ session_id: "s-fallback" } as object),
    });
    expect(completion.model).toBe("m-backup");
    const call = await lastCall("s-fallback");
    expect(call).toMatchObject({ attempts: 4, model: "m-backup", status: "ok" });
  });

  it("routes by intent and by application, and uses the default model otherwise", async () => {
    const viaIntent = await client.chat.completions.create({
      model: "",
      messages: [{ role: "user", content: "x" }],
      ...({ intent: "answer" } as object),
    });
    expect(viaIntent.model).toBe("m-primary");
    const viaApp = await client.chat.completions.create({
      model: "",
      messages: [{ role: "user", content: "x" }],
      ...({ application: "support" } as object),
    });
    expect(viaApp.model).toBe("m-backup");
    const fallbackDefault = await client.chat.completions.create({
      model: "",
      messages: [{ role: "user", content: "x" }],
      ...({ intent: "unrouted" } as object),
    });
    expect(fallbackDefault.model).toBe("m-default");
  });

  it("answers 504 for an upstream that hangs, after its retries, and stays up", async () => {
    upstream.plan("m-hang", [{ hang: true }, { hang: true }, { hang: true }]);
    const res = await server.invoke({ model: "m-hang", messages: [{ role: "user", content: "hello?" }], session_id: "s-hang" });
    expect(res.status).toBe(504);
    expect(res.body.error.code).toBe("upstream_timeout");
    expect(res.body.error.message).toContain("3 attempt");
    const call = await lastCall("s-hang");
    expect(call).toMatchObject({ status: "error", attempts: 3 });
    expect(call.error).toContain("no answer within 400 ms");
    const after = await server.invoke({ model: "m-fine", messages: [{ role: "user", content: "ok" }] });
    expect(after.status).toBe(200);
  });

  it("answers a clean 502 for malformed upstream JSON, plain and mid-stream", async () => {
    upstream.plan("m-broken", [{ malformed: true }]);
    const res = await server.invoke({ model: "m-broken", messages: [{ role: "user", content: "hi" }], session_id: "s-broken" });
    expect(res.status).toBe(502);
    expect(res.body.error).toMatchObject({ type: "server_error", code: "upstream_error" });
    expect(res.body.error.message).toMatch(/malformed JSON|JSON/);
    const call = await lastCall("s-broken");
    expect(call.status).toBe("error");

    upstream.plan("m-breaks", [{ streamBreak: true }]);
    const stream = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "m-breaks", stream: true, messages: [{ role: "user", content: "a b c d" }] }),
    });
    expect(stream.status).toBe(200);
    const text = await stream.text();
    expect(text).toContain('"content":"Echo:"');
    expect(text).toContain('"code":"upstream_error"');
    expect(text).not.toContain("[DONE]");
  });

  it("ends a stream that stalls after its first chunks with a timeout error event, and records it", async () => {
    upstream.plan("m-stall", [{ streamStall: true }]);
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "m-stall", stream: true, session_id: "s-stall", messages: [{ role: "user", content: "a b c d" }] }),
    });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain('"content":"Echo:"');
    expect(text).toContain('"code":"upstream_timeout"');
    const call = await lastCall("s-stall");
    expect(call.status).toBe("error");
    expect(call.error).toContain("stalled");
    expect(call.ttftMs).toBeGreaterThan(0);
  });

  it("closes the upstream stream and records a cancelled call when the client goes away", async () => {
    upstream.chunkDelayMs = 100;
    try {
      const abandonedBefore = upstream.abandoned;
      const abort = new AbortController();
      const res = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        signal: abort.signal,
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "m-leave",
          stream: true,
          session_id: "s-leave",
          messages: [{ role: "user", content: "a b c d e f g h" }],
        }),
      });
      const reader = res.body!.getReader();
      await reader.read();
      abort.abort();
      for (let i = 0; i < 100 && upstream.abandoned === abandonedBefore; i++) await new Promise((r) => setTimeout(r, 20));
      expect(upstream.abandoned).toBe(abandonedBefore + 1);
      let call;
      for (let i = 0; i < 100 && !call; i++) {
        call = await lastCall("s-leave");
        if (!call) await new Promise((r) => setTimeout(r, 20));
      }
      expect(call).toMatchObject({ status: "error" });
      expect(call!.error).toContain("cancelled");
    } finally {
      upstream.chunkDelayMs = 0;
    }
  });

  it("answers a stream's failure before the first chunk with its status", async () => {
    upstream.plan("m-down", [{ status: 500 }, { status: 500 }, { status: 500 }]);
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "m-down", stream: true, messages: [{ role: "user", content: "x" }] }),
    });
    expect(res.status).toBe(502);
    expect((await res.json()).error.message).toContain("HTTP 500");
  });

  it("passes an upstream 400 back as a 400 without retrying", async () => {
    upstream.plan("m-bad", [
      { status: 400, body: JSON.stringify({ error: { message: "temperature is out of range", type: "invalid_request_error" } }) },
    ]);
    const before = upstream.requests.length;
    const res = await server.invoke({ model: "m-bad", messages: [{ role: "user", content: "x" }] });
    expect(res.status).toBe(400);
    expect(res.body.error.message).toContain("temperature is out of range");
    expect(upstream.requests.length - before).toBe(1);
  });

  it("embeds through the edge with the openai client", async () => {
    const resp = await client.embeddings.create({ model: "e-model", input: ["abc", "de"] });
    expect(resp.data.map((d) => d.embedding[0])).toEqual([3, 2]);
    const byDefault = await server.request("POST", "/v1/embeddings", { input: "x", session_id: "s-embed" });
    expect(byDefault.status).toBe(200);
    expect(upstream.requests.at(-1)!.body.model).toBe("e-default");
    const call = await lastCall("s-embed");
    expect(call).toMatchObject({ kind: "embeddings", model: "e-default", status: "ok" });
  });

  it("blanks the secret values sent with a plain model call out of its record, never upstream", async () => {
    const secret = "sk-plain-call-secret-42";
    const res = await server.invoke({
      model: "m-secret",
      messages: [{ role: "user", content: `use ${secret} please` }],
      secrets: { token: secret },
      session_id: "s-secret",
    });
    expect(res.status).toBe(200);
    expect(upstream.requests.at(-1)!.body.secrets).toBeUndefined();
    expect(upstream.requests.at(-1)!.body.messages[0].content).toContain(secret);
    const call = await lastCall("s-secret");
    const stored = JSON.stringify([call.request, call.response]);
    expect(stored).not.toContain(secret);
    expect(stored).toContain("use [REDACTED] please");
  });

  it("refuses bad input with 400 naming the field", async () => {
    const noMessages = await server.invoke({ model: "m-x" });
    expect(noMessages.status).toBe(400);
    expect(noMessages.body.error.param).toBe("messages");
    const badMessages = await server.invoke({ model: "m-x", messages: "hi" });
    expect(badMessages.status).toBe(400);
    const noInput = await server.request("POST", "/v1/embeddings", { model: "e" });
    expect(noInput.status).toBe(400);
    expect(noInput.body.error.param).toBe("input");
    const badJson = await server.request("POST", "/v1/embeddings", "{nope");
    expect(badJson.status).toBe(400);
    await expect(proxy.listCalls({ limit: 5000 }, auth())).rejects.toThrow(/limit/);
    const noKey = await server.invoke({ model: "m-x", messages: [] }, { authorization: "Bearer sk-wrong" });
    expect(noKey.status).toBe(401);
  });

  it("lists workflows and proxied models at /v1/models", async () => {
    await server.upload("lister", "def execute(ctx):\n    return 1\n");
    const list = await client.models.list();
    const ids = list.data.map((m) => m.id);
    expect(ids).toContain("workflow:lister");
    expect(ids).toEqual(expect.arrayContaining(["primary", "backup", "m-default", "shaker-local"]));
  });

  it("exposes call counters on /v1/metrics to admin keys only (they count every account's calls)", async () => {
    const res = await server.request("GET", "/v1/metrics");
    expect(res.status).toBe(200);
    expect(res.body.data.modelproxy.calls).toBeGreaterThan(5);
    expect(res.body.data.modelproxy.upstream_attempts).toBeGreaterThan(res.body.data.modelproxy.calls);
    expect(res.body.data.modelproxy.calls_dropped).toBe(0);

    const registry = createClient(RegistryService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const { apiKey } = await registry.createApiKey(
      { accountName: "metrics-tenant" },
      { headers: { authorization: `Bearer ${server.apiKey}` } },
    );
    const tenant = await server.request("GET", "/v1/metrics", undefined, { authorization: `Bearer ${apiKey}` });
    expect(tenant.status).toBe(403);
    expect(tenant.body.error.message).toBe("only an admin account's key may read the server's metrics");
    expect(JSON.stringify(tenant.body)).not.toMatch(/upstream_attempts|calls_recorded/);
    const rpc = createClient(ModelProxyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const err = await rpc.getMetrics({}, { headers: { authorization: `Bearer ${apiKey}` } }).then(
      () => undefined,
      (e) => ConnectError.from(e),
    );
    expect(err?.code).toBe(Code.PermissionDenied);
  });
});
