// The ModelProxy's rules in process: its handlers over a store of their own (in memory, or an empty PostgreSQL database),
// called through createRouterTransport (no port of its own, no edge, no other service), routing to the fake
// OpenAI-compatible upstream of fake-upstream.ts. API keys are a table of this file. The same
// behaviour through the edge and the openai client is in modelproxy.test.ts.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JsonObject } from "@bufbuild/protobuf";
import { type CallOptions, Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { loadProxyConfig } from "../services/modelproxy/providers.js";
import { createModelProxyService } from "../services/modelproxy/service.js";
import { createModelProxyStore, type ModelProxyStore } from "../services/modelproxy/store.js";
import { createAuth, type RunClaims } from "../services/shared/auth.js";
import type { Config } from "../services/shared/config.js";
import { errorMetadata } from "../services/shared/errors.js";
import { testStoreLocation } from "./databases.js";
import { type FakeUpstream, startFakeUpstream, writeFakeModelsConfig } from "./fake-upstream.js";

const keys: Record<string, { accountId: string; admin: boolean }> = {
  "key-alice": { accountId: "acct-alice", admin: false },
  "key-bob": { accountId: "acct-bob", admin: false },
  "key-admin": { accountId: "acct-admin", admin: true },
};
const auth = createAuth({
  serviceSecret: "modelproxy-service-test-secret",
  authenticateKey: async (key) => (keys[key] ? { ...keys[key], keyId: `id-${key}` } : undefined),
});

const alice: CallOptions = { headers: { authorization: "Bearer key-alice" } };
const bob: CallOptions = { headers: { authorization: "Bearer key-bob" } };
const admin: CallOptions = { headers: { authorization: "Bearer key-admin" } };

/** asRun calls with the token the Executor would give a run of alice's in session `session`. */
function asRun(session: string, run = "run-1"): CallOptions {
  const claims: RunClaims = {
    account: "acct-alice",
    workflow: "flow",
    version: "1.0.0",
    versionId: "ver-1",
    run,
    session,
    datastores: [],
    depth: 0,
    exp: Date.now() + 60_000,
  };
  return { headers: { authorization: `Bearer ${auth.mintRunToken(claims)}` } };
}

/** refusal is the code, message and metadata of the error a call fails with. */
async function refusal(call: Promise<unknown>): Promise<{ code: Code; message: string; param: string | null; upstream: string | null }> {
  try {
    await call;
  } catch (e) {
    const ce = ConnectError.from(e);
    return {
      code: ce.code,
      message: ce.rawMessage,
      param: ce.metadata.get(errorMetadata.param),
      upstream: ce.metadata.get(errorMetadata.upstreamStatus),
    };
  }
  throw new Error("expected a refusal, got none");
}

let upstream: FakeUpstream;
let dir: string;
let database: Awaited<ReturnType<typeof testStoreLocation>>;
let store: ModelProxyStore;
let proxy: ReturnType<typeof createModelProxyService>;
let client: ReturnType<typeof createClient<typeof ModelProxyService>>;

beforeAll(async () => {
  upstream = await startFakeUpstream();
  dir = mkdtempSync(join(tmpdir(), "shaker-modelproxy-service-"));
  const file = writeFakeModelsConfig(dir, upstream, { intents: { answer: ["primary"] } });
  const proxyConfig = loadProxyConfig(
    { openaiApiKey: undefined, openaiBaseUrl: undefined, modelsConfigFile: file, defaultModel: undefined },
    {},
  );
  database = await testStoreLocation();
  store = await createModelProxyStore(database.location);
  proxy = createModelProxyService({ store, config: {} as Config, auth, proxyConfig, recorder: { flushMs: 10 } });
  client = createClient(
    ModelProxyService,
    createRouterTransport((router) => router.service(ModelProxyService, proxy.impl)),
  );
});

afterAll(async () => {
  await proxy?.close();
  await store?.close();
  await database?.release();
  await upstream?.close();
  rmSync(dir, { recursive: true, force: true });
});

const hello = { messages: [{ role: "user", content: "hello there" }] };

describe("chat completions", () => {
  it("passes a call to the upstream with the provider's key and records it for the caller's account", async () => {
    const resp = await client.chatCompletion({ body: { model: "m-plain", ...hello }, context: { sessionId: "s-plain" } }, alice);
    expect((resp.completion!.choices as { message: { content: string } }[])[0].message.content).toBe("Echo: hello there");
    const sent = upstream.requests.at(-1)!;
    expect(sent.body.model).toBe("m-plain");
    expect(sent.headers.authorization).toBe("Bearer sk-upstream");
    const { calls } = await client.listCalls({ sessionId: "s-plain" }, alice);
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({
      callId: resp.callId,
      accountId: "acct-alice",
      kind: "chat",
      model: "m-plain",
      provider: "fake",
      attempts: 1,
      status: "ok",
    });
    expect((await client.listCalls({ sessionId: "s-plain" }, bob)).calls).toEqual([]);
  });

  it("uses the default model when the body names none", async () => {
    await client.chatCompletion({ body: hello }, alice);
    expect(upstream.requests.at(-1)!.body.model).toBe("m-default");
  });

  it("refuses a body without messages, with a message that is not an object, or a model that is not a string", async () => {
    expect(await refusal(client.chatCompletion({}, alice))).toMatchObject({
      code: Code.InvalidArgument,
      message: "'body' is required",
      param: "body",
    });
    expect(await refusal(client.chatCompletion({ body: { model: "m" } }, alice))).toMatchObject({
      code: Code.InvalidArgument,
      message: "'messages' is required and must be an array of chat messages",
      param: "messages",
    });
    expect(await refusal(client.chatCompletion({ body: { messages: [hello.messages[0], "hi"] } }, alice))).toMatchObject({
      code: Code.InvalidArgument,
      message: "'messages[1]' must be a JSON object",
      param: "messages[1]",
    });
    expect(await refusal(client.chatCompletion({ body: { ...hello, model: 3 } }, alice))).toMatchObject({
      code: Code.InvalidArgument,
      message: "'model' must be a string",
      param: "model",
    });
    expect((await refusal(client.chatCompletion({ body: hello }))).code).toBe(Code.Unauthenticated);
  });

  it("retries an upstream failure, then falls back to the next model of the route", async () => {
    upstream.plan("m-primary", [{ status: 500 }]);
    await client.chatCompletion({ body: hello, context: { intent: "answer", sessionId: "s-retry" } }, alice);
    upstream.plan("m-primary", [{ status: 500 }, { status: 503 }, { status: 502 }]);
    await client.chatCompletion({ body: hello, context: { intent: "answer", sessionId: "s-retry" } }, alice);
    expect(upstream.requests.at(-1)!.body.model).toBe("m-backup");
    const { calls } = await client.listCalls({ sessionId: "s-retry" }, alice);
    expect(calls.map((c) => [c.model, c.attempts, c.status])).toEqual([
      ["m-primary", 2, "ok"],
      ["m-backup", 4, "ok"],
    ]);
  });

  it("waits the Retry-After an upstream asks for before retrying, and carries the caller's traceparent upstream", async () => {
    upstream.plan("m-wait", [{ status: 429, retryAfter: 1 }]);
    const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const started = performance.now();
    await client.chatCompletion(
      { body: { ...hello, model: "m-wait" }, context: { sessionId: "s-wait" } },
      { headers: { ...alice.headers, traceparent } },
    );
    // The config's backoff is 5 ms: only the upstream's Retry-After makes it wait a second.
    expect(performance.now() - started).toBeGreaterThan(950);
    const sent = upstream.requests.filter((r) => r.body.model === "m-wait");
    expect(sent.map((r) => r.headers.traceparent)).toEqual([traceparent, traceparent]);
    const [call] = (await client.listCalls({ sessionId: "s-wait" }, alice)).calls;
    expect(call).toMatchObject({ attempts: 2, status: "ok" });
  });

  it("answers an upstream's refusal as InvalidArgument, without retrying", async () => {
    const before = upstream.requests.length;
    upstream.plan("m-refuses", [{ status: 400, body: JSON.stringify({ error: { message: "bad temperature" } }) }]);
    const r = await refusal(client.chatCompletion({ body: { ...hello, model: "m-refuses" } }, alice));
    expect(r.code).toBe(Code.InvalidArgument);
    expect(r.message).toMatch(/^the upstream model refused the request: /);
    expect(upstream.requests.length - before).toBe(1);
  });

  it("marks an upstream that keeps failing as 502 and one that never answers as 504", async () => {
    upstream.plan("m-down", [{ status: 500 }, { status: 500 }, { status: 500 }]);
    expect(await refusal(client.chatCompletion({ body: { ...hello, model: "m-down" } }, alice))).toMatchObject({
      code: Code.Unavailable,
      upstream: "502",
    });
    upstream.plan("m-hangs", [{ hang: true }, { hang: true }, { hang: true }]);
    expect(await refusal(client.chatCompletion({ body: { ...hello, model: "m-hangs" } }, alice))).toMatchObject({
      code: Code.DeadlineExceeded,
      upstream: "504",
    });
  });

  it("streams chunks and records the whole answer with its usage", async () => {
    const chunks: unknown[] = [];
    for await (const m of client.chatCompletionStream(
      { body: { ...hello, model: "m-stream" }, context: { sessionId: "s-stream" } },
      alice,
    )) {
      chunks.push(m.chunk);
    }
    const text = chunks.map((c) => (c as { choices?: { delta?: { content?: string } }[] }).choices?.[0]?.delta?.content ?? "").join("");
    expect(text).toBe("Echo: hello there");
    const [call] = (await client.listCalls({ sessionId: "s-stream" }, alice)).calls;
    expect(call).toMatchObject({ kind: "chat_stream", status: "ok", completionTokens: 3 });
  });
});

describe("embeddings", () => {
  it("embeds through the upstream with the default embedding model", async () => {
    const resp = await client.embeddings({ body: { input: ["abc", "de"] } }, alice);
    expect((resp.response!.data as { embedding: number[] }[]).map((d) => d.embedding)).toEqual([
      [3, 1, 0, 0.5],
      [2, 1, 0, 0.5],
    ]);
    expect(upstream.requests.at(-1)!.body.model).toBe("e-default");
  });

  it("refuses an input that is missing or empty, and a model that is not a string", async () => {
    for (const body of [{}, { input: [] }, { input: null }] as JsonObject[]) {
      expect(await refusal(client.embeddings({ body }, alice))).toMatchObject({
        code: Code.InvalidArgument,
        message: "'input' is required: a string or a non-empty list of strings",
        param: "input",
      });
    }
    expect(await refusal(client.embeddings({ body: { input: "x", model: 1 } }, alice))).toMatchObject({
      code: Code.InvalidArgument,
      message: "'model' must be a string",
      param: "model",
    });
  });
});

describe("call records", () => {
  it("a run's calls are its own run's and session's, whatever context it claims; it lists only its session", async () => {
    await client.chatCompletion({ body: hello, context: { sessionId: "s-other", runId: "run-x" } }, asRun("s-run", "run-7"));
    expect((await client.listCalls({ sessionId: "s-other" }, alice)).calls).toEqual([]);
    const [call] = (await client.listCalls({ sessionId: "s-run" }, alice)).calls;
    expect(call).toMatchObject({ sessionId: "s-run", runId: "run-7", workflowRefName: "flow" });
    const seen = (await client.listCalls({ sessionId: "s-plain" }, asRun("s-run"))).calls;
    expect(seen.map((c) => c.sessionId)).toEqual(["s-run"]);
  });

  it("refuses a page out of bounds (at most 1000 calls), and leaves the bodies out unless asked", async () => {
    expect(await refusal(client.listCalls({ offset: -1 }, alice))).toMatchObject({
      code: Code.InvalidArgument,
      message: "offset must be 0 or more",
      param: "offset",
    });
    for (const limit of [-1, 1001]) {
      expect(await refusal(client.listCalls({ limit }, alice))).toMatchObject({
        code: Code.InvalidArgument,
        message: "limit must be between 1 and 1000",
        param: "limit",
      });
    }
    const [plain] = (await client.listCalls({ sessionId: "s-plain" }, alice)).calls;
    expect(plain.request).toBeUndefined();
    const [withBodies] = (await client.listCalls({ sessionId: "s-plain", includeBodies: true }, alice)).calls;
    expect(withBodies.request?.messages).toEqual(hello.messages);
    expect(withBodies.response?.choices).toBeDefined();
  });

  it("refuses NUL characters in the text a record keeps, naming the field; bodies and upstream errors keep theirs", async () => {
    const nul = (more: Record<string, string>) => client.chatCompletion({ body: hello, context: { sessionId: "s-nul", ...more } }, alice);
    for (const [field, context] of [
      ["session_id", { sessionId: "s\0" }],
      ["run_id", { runId: "\0" }],
      ["workflow_ref_name", { workflowRefName: "\0" }],
      ["intent", { intent: "\0" }],
      ["application", { application: "\0" }],
    ] as const) {
      expect(await refusal(nul(context))).toMatchObject({ code: Code.InvalidArgument, param: field });
    }
    expect(await refusal(client.chatCompletion({ body: { ...hello, model: "m\0" } }, alice))).toMatchObject({
      code: Code.InvalidArgument,
      message: "model must not contain NUL characters",
      param: "model",
    });
    expect(await refusal(client.listCalls({ runId: "\0" }, alice))).toMatchObject({ code: Code.InvalidArgument, param: "run_id" });
    // JSON keeps a NUL escaped; an upstream's error keeps a stand-in.
    await client.chatCompletion(
      { body: { model: "m-plain", messages: [{ role: "user", content: "a\0b" }] }, context: { sessionId: "s-nul" } },
      alice,
    );
    upstream.plan("m-nul", [{ status: 400, body: JSON.stringify({ error: { message: "bad\0input" } }) }]);
    const refused = await refusal(client.chatCompletion({ body: { ...hello, model: "m-nul" }, context: { sessionId: "s-nul" } }, alice));
    expect(refused.code).toBe(Code.InvalidArgument);
    const calls = (await client.listCalls({ sessionId: "s-nul", includeBodies: true }, alice)).calls;
    expect(calls.map((c) => (c.request!.messages as { content: string }[])[0].content)).toEqual(["a\0b", "hello there"]);
    expect(calls[1].error).toMatch(/bad\uFFFDinput/);
  });

  it("lists the configured models to any account, and the server's metrics to admins only", async () => {
    const ids = (await client.listModels({}, alice)).models.map((m) => m.id);
    expect(ids).toEqual(expect.arrayContaining(["primary", "backup"]));
    expect((await refusal(client.getMetrics({}, alice))).code).toBe(Code.PermissionDenied);
    const metrics = await client.getMetrics({}, admin);
    expect(metrics.calls).toBeGreaterThan(0);
    expect(metrics.upstreamAttempts).toBeGreaterThanOrEqual(metrics.calls);
  });
});
