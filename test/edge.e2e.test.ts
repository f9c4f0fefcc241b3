import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { alive, startTestServer, type TestServer, waitFor } from "./helpers.js";

const emitter = `
import time
from shaker import WorkflowContext

def execute(ctx: WorkflowContext):
    n = ctx.input.get("n", 50)
    for i in range(n):
        ctx.emit({"i": i, "t": time.time()})
        time.sleep(ctx.input.get("gap", 0.01))
    time.sleep(ctx.input.get("tail", 0.3))
    return {"returned_at": time.time(), "n": n}
`;

const failsMidway = `
def execute(ctx):
    ctx.emit("first")
    if (ctx.input or {}).get("fail", True):
        raise RuntimeError("broke after the first emit")
    return "ok"
`;

const sleeper = `
import os, time
def execute(ctx):
    ctx.emit({"pid": os.getpid()})
    time.sleep(ctx.input.get("seconds", 30))
    return "woke"
`;

const plain = "def execute(ctx):\n    return {'input': ctx.input, 'params': ctx.params}\n";

const logsThenReturns = "def execute(ctx):\n    ctx.log('from ctx.log')\n    print('from print')\n    return 'ok'\n";

describe("the edge: OpenAI-compatible surface over a real port", () => {
  let server: TestServer;
  let client: OpenAI;

  beforeAll(async () => {
    server = await startTestServer({ sseKeepAliveMs: 100, maxBodyBytes: 256 * 1024, maxConcurrentRunsPerAccount: 20 });
    client = new OpenAI({ apiKey: server.apiKey, baseURL: `${server.url}/v1`, maxRetries: 0 });
    await server.upload("emitter", emitter);
    await server.upload("fails-midway", failsMidway);
    await server.upload("sleeper", sleeper);
    await server.upload("sleeper-1s", sleeper, { timeout_seconds: 1 });
    await server.upload("plain", plain);
    await server.upload("background", plain, { execution_mode: "async" });
    await server.upload("background-logs", logsThenReturns, { execution_mode: "async" });
  });
  afterAll(() => server.close());

  it("refuses an upload whose mode or bump names an object's own property, with 400", async () => {
    for (const [name, value] of [
      ["execution_mode", "toString"],
      ["version_bump", "constructor"],
    ]) {
      const res = await server.request("POST", "/v1/workflows/upload", { workflow_ref_name: "plain", script: plain, [name]: value });
      expect(res.status, `${name}=${value}`).toBe(400);
      expect(res.body.error.param).toBe(name);
    }
  });

  it("streams 50 emitted values in order, each before the workflow returns, then the final chunk", async () => {
    const stream = await client.chat.completions.create({
      model: "workflow:emitter",
      messages: [{ role: "user", content: "go" }],
      stream: true,
      ...({ input: { n: 50, gap: 0.01, tail: 0.5 } } as object),
    });
    const arrivals: { i: number; at: number }[] = [];
    let final: any;
    let firstDelta: any;
    let outputText: string | undefined;
    for await (const chunk of stream as AsyncIterable<any>) {
      if (chunk.choices[0].finish_reason === "stop") {
        final = chunk;
        continue;
      }
      firstDelta ??= chunk.choices[0].delta;
      if (chunk.output_text) {
        // The output's text, after the emitted values it does not continue (docs/api.md §3).
        outputText = chunk.choices[0].delta.content;
        continue;
      }
      expect(chunk.object).toBe("chat.completion.chunk");
      expect(JSON.parse(chunk.choices[0].delta.content)).toEqual(chunk.emitted);
      arrivals.push({ i: chunk.emitted.i, at: Date.now() });
    }
    expect(firstDelta.role).toBe("assistant");
    expect(arrivals.map((a) => a.i)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(final).toBeDefined();
    expect(final.choices[0].delta).toEqual({});
    expect(final.output.n).toBe(50);
    expect(outputText).toBe(`\n\n${JSON.stringify(final.output)}`);
    expect(final.run_id).toMatch(/^run_/);
    expect(final.session_id).toMatch(/^sess_/);
    expect(final.usage).toEqual({ prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 });
    // Every value reached the client while the workflow was still running (it sleeps 0.5 s before returning).
    const returnedAt = final.output.returned_at * 1000;
    for (const a of arrivals) expect(a.at).toBeLessThan(returnedAt);
  });

  it("surfaces an error raised mid-stream as the client's error", async () => {
    const stream = await client.chat.completions.create({
      model: "workflow:fails-midway",
      messages: [{ role: "user", content: "go" }],
      stream: true,
    });
    const seen: string[] = [];
    await expect(
      (async () => {
        for await (const chunk of stream) seen.push(chunk.choices[0]?.delta?.content ?? "");
      })(),
    ).rejects.toThrow(/broke after the first emit/);
    expect(seen).toEqual(["first"]);
  });

  it("frames SSE exactly: headers, data events, keep-alive comments, [DONE]", async () => {
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:emitter", input: { n: 2, gap: 0.3, tail: 0.3 }, stream: true }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    expect(res.headers.get("cache-control")).toBe("no-cache");
    expect(res.headers.get("x-accel-buffering")).toBe("no");
    const runId = res.headers.get("x-request-id");
    expect(runId).toMatch(/^run_/);
    const text = await res.text();
    expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
    const blocks = text.split("\n\n").filter((b) => b !== "");
    for (const b of blocks) expect(b === ": keep-alive" || b.startsWith("data: ")).toBe(true);
    expect(blocks.filter((b) => b === ": keep-alive").length).toBeGreaterThan(0);
    const events = blocks.filter((b) => b.startsWith("data: ") && b !== "data: [DONE]").map((b) => JSON.parse(b.slice(6)));
    // Two emitted values, the output's text (which they do not spell), the final chunk.
    expect(events).toHaveLength(4);
    expect(events[0].choices[0].delta.role).toBe("assistant");
    expect(events[1].choices[0].delta.role).toBeUndefined();
    expect(events.every((e) => e.id === `chatcmpl-${runId}`)).toBe(true);
    expect(events[2]).toMatchObject({ output_text: true, choices: [{ delta: { content: `\n\n${JSON.stringify(events[3].output)}` } }] });
    expect(events[2].emitted).toBeUndefined();
    expect(events[3].choices[0].finish_reason).toBe("stop");
    expect(events[3].run_id).toBe(runId);
  });

  it("writes a failure after the start as one error event and ends the stream", async () => {
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:fails-midway", input: {}, stream: true }),
    });
    expect(res.status).toBe(200);
    const blocks = (await res.text()).split("\n\n").filter((b) => b.startsWith("data: "));
    expect(blocks).toHaveLength(2);
    const error = JSON.parse(blocks[1].slice(6)).error;
    expect(error.code).toBe("workflow_error");
    expect(error.message).toContain("RuntimeError: broke after the first emit");
  });

  it("kills the run's process when the client disconnects mid-stream", async () => {
    const abort = new AbortController();
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:sleeper", input: { seconds: 30 }, stream: true }),
      signal: abort.signal,
    });
    const runId = res.headers.get("x-request-id")!;
    const reader = res.body!.getReader();
    let buffered = "";
    while (!buffered.includes("\n\n")) buffered += new TextDecoder().decode((await reader.read()).value);
    const pid = JSON.parse(buffered.split("\n\n")[0].slice(6)).emitted.pid as number;
    expect(alive(pid)).toBe(true);
    abort.abort();
    await waitFor(() => !alive(pid), `process ${pid} to be killed`);
    await waitFor(
      async () => (await server.request("GET", `/v1/runs/${runId}`)).body.data.status === "cancelled",
      "the run to be recorded as cancelled",
    );
  });

  it("answers every status of the error table as an APIError with that status", async () => {
    const statusOf = async (fn: () => Promise<unknown>) => {
      try {
        await fn();
        return 200;
      } catch (e) {
        expect(e).toBeInstanceOf(OpenAI.APIError);
        return (e as InstanceType<typeof OpenAI.APIError>).status;
      }
    };
    const call =
      (body: object, c = client) =>
      () =>
        c.chat.completions.create({ messages: [{ role: "user", content: "x" }], ...body } as any);
    expect(await statusOf(call({ model: "workflow:Bad Name" }))).toBe(400);
    expect(
      await statusOf(call({ model: "workflow:plain" }, new OpenAI({ apiKey: "sk-wrong", baseURL: `${server.url}/v1`, maxRetries: 0 }))),
    ).toBe(401);
    expect(await statusOf(call({ model: "workflow:nope" }))).toBe(404);
    expect(await statusOf(call({ model: "workflow:plain@9.9.9" }))).toBe(404);
    expect(await statusOf(call({ model: "workflow:sleeper-1s", input: { seconds: 10 } }))).toBe(408);
    expect(await statusOf(call({ model: "workflow:plain", input: { blob: "x".repeat(300 * 1024) } }))).toBe(413);
    expect(await statusOf(call({ model: "workflow:fails-midway" }))).toBe(500);
    // 429: fill the account's concurrency limit with sleeping runs, then one more.
    const busy = Array.from({ length: 20 }, () =>
      fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "workflow:sleeper", input: { seconds: 3 }, stream: true }),
      }),
    );
    const responses = await Promise.all(busy);
    expect(await statusOf(call({ model: "workflow:plain" }))).toBe(429);
    for (const r of responses) await r.body?.cancel();
    // The cancelled runs give their slots back as their processes are killed: wait for that, so the
    // next test does not meet the limit.
    await waitFor(
      async () => (await server.invoke({ model: "workflow:plain", input: {} })).status === 200,
      "the concurrency slots to free",
    );
  });

  it("refuses a body over the limit while reading it, without waiting for all of it", async () => {
    const { request } = await import("node:http");
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json", "transfer-encoding": "chunked" },
      });
      req.on("response", (res) => {
        res.resume();
        resolve(res.statusCode!);
        req.destroy();
      });
      req.on("error", (e) => (e.message.includes("EPIPE") || e.message.includes("ECONNRESET") ? undefined : reject(e)));
      // Keep sending past the limit; the answer must come before the body ends (it never does).
      req.write('{"model":"workflow:plain","input":"');
      const chunk = "x".repeat(64 * 1024);
      let sent = 0;
      const pump = () => {
        if (req.destroyed || sent > 2 * 1024 * 1024) return;
        sent += chunk.length;
        req.write(chunk, pump);
      };
      pump();
    });
    expect(status).toBe(413);
  });

  it("accepts the key as X-Api-Key and hands inference params to ctx.params", async () => {
    const res = await server.invoke(
      { model: "workflow:plain", input: { a: 1 }, temperature: 0.25, max_tokens: 7 },
      { authorization: "", "x-api-key": server.apiKey },
    );
    expect(res.status).toBe(200);
    expect(res.body.output).toEqual({ input: { a: 1 }, params: { temperature: 0.25, max_tokens: 7, stream: false } });
  });

  it("answers CORS preflights for browser clients", async () => {
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "OPTIONS",
      headers: {
        origin: "http://example.test",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
      },
    });
    expect(res.status).toBe(204);
    expect(res.headers.get("access-control-allow-origin")).toBe("*");
    expect(res.headers.get("access-control-allow-headers")).toContain("authorization");
  });

  it("records the logs of a run nobody listens to (async)", async () => {
    const res = await server.invoke({ model: "workflow:background-logs", input: {} });
    expect(res.status).toBe(202);
    const path = `/v1/runs/${res.body.run_id}`;
    await waitFor(async () => (await server.request("GET", path)).body.data.status === "succeeded", "the async run to finish");
    const messages = (await server.request("GET", path)).body.data.logs.map((l: { message: string }) => l.message);
    expect(messages).toEqual(expect.arrayContaining(["from ctx.log", "from print"]));
  });

  it("answers an async workflow with 202 and the run id, and serves the result at /v1/runs/{id}", async () => {
    const res = await server.invoke({ model: "workflow:background", input: { job: 1 } });
    expect(res.status).toBe(202);
    const runId = res.body.run_id;
    expect(res.headers.get("location")).toBe(`/v1/runs/${runId}`);
    await waitFor(
      async () => (await server.request("GET", `/v1/runs/${runId}`)).body.data.status === "succeeded",
      "the async run to finish",
    );
    const run = (await server.request("GET", `/v1/runs/${runId}`)).body.data;
    expect(run.output).toEqual({ input: { job: 1 }, params: { stream: false } });
    // Asking to stream keeps even an async workflow attached.
    const streamed = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:background", input: {}, stream: true }),
    });
    expect(streamed.status).toBe(200);
    expect(await streamed.text()).toContain("data: [DONE]");
  });

  it("lists and filters runs, and shows one run with its logs and emitted values", async () => {
    const done = await server.invoke({ model: "workflow:emitter", input: { n: 2, gap: 0, tail: 0 }, session_id: "sess-runs-list" });
    expect(done.status).toBe(200);
    const list = await server.request("GET", "/v1/runs?workflow=emitter&session_id=sess-runs-list&status=succeeded");
    expect(list.status).toBe(200);
    expect(list.body.data.map((r: any) => r.run_id)).toEqual([done.body.run_id]);
    const one = await server.request("GET", `/v1/runs/${done.body.run_id}`);
    expect(one.body.data.emitted.map((e: any) => e.value.i)).toEqual([0, 1]);
    expect(one.body.data.status).toBe("succeeded");
    expect((await server.request("GET", "/v1/runs?status=sideways")).status).toBe(400);
    expect((await server.request("GET", "/v1/runs?limit=1000")).status).toBe(400);
    expect((await server.request("GET", "/v1/runs/run_nope")).status).toBe(404);
  });

  it("refuses an NDJSON upload's line longer than the body limit, naming it, and keeps nothing of the upload", async () => {
    expect((await server.request("POST", "/v1/datastores", { name: "lines" })).status).toBe(201);
    const long = JSON.stringify({ id: "long", text: "x".repeat(300 * 1024), vector: [1] });
    // Blank lines are not records: the long line is records[1] after them too.
    for (const body of [
      `{"id":"a","vector":[1]}\n${long}\n{"id":"b","vector":[1]}\n`,
      `{"id":"a","vector":[1]}\n${long}`,
      `\n \t\n{"id":"a","vector":[1]}\r\n\r\n${long}\n`,
    ]) {
      const res = await server.request("POST", "/v1/datastores/lines/records", body, { "content-type": "application/x-ndjson" });
      expect(res.status).toBe(400);
      expect(res.body.error).toMatchObject({
        message: "records[1]: line is longer than the limit of 262144 bytes",
        param: "records[1]",
        code: "invalid_record",
      });
    }
    expect((await server.request("GET", "/v1/datastores/lines/records/a")).status).toBe(404);
  });
});
