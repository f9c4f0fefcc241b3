// POST /v1/responses with the official `openai` client: workflows (created and streamed, failures)
// and a plain model through the ModelProxy against the fake upstream.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FakeUpstream, startFakeUpstream, writeFakeModelsConfig } from "./fake-upstream.js";
import { startTestServer, type TestServer } from "./helpers.js";

const workflows: Record<string, string> = {
  echo: "def execute(ctx):\n    return {'messages': ctx.messages, 'input': ctx.input, 'metadata': ctx.metadata, 'params': ctx.params}\n",
  progress: "def execute(ctx):\n    ctx.emit('searching…')\n    ctx.emit({'pages': 2})\n    return 'Paris.'\n",
  tokens: "def execute(ctx):\n    for t in ['Par', 'is']:\n        ctx.emit(t)\n    return 'Paris.'\n",
  fails: "def execute(ctx):\n    raise ValueError('no answer today')\n    return 1\n",
  "fails-midway": "def execute(ctx):\n    ctx.emit('first')\n    raise RuntimeError('broke after the first emit')\n    return 1\n",
  later: "def execute(ctx):\n    return 'done'\n",
};

/** sse reads a Responses stream's events from raw text. */
function eventsOf(text: string): { event: string; data: any }[] {
  return text
    .split("\n\n")
    .filter((block) => block.startsWith("event: "))
    .map((block) => {
      const [eventLine, dataLine] = block.split("\n");
      return { event: eventLine.slice("event: ".length), data: JSON.parse(dataLine.slice("data: ".length)) };
    });
}

describe("POST /v1/responses", () => {
  let upstream: FakeUpstream;
  let server: TestServer;
  let client: OpenAI;
  let dir: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    dir = mkdtempSync(join(tmpdir(), "shaker-responses-"));
    const file = writeFakeModelsConfig(dir, upstream, {});
    server = await startTestServer({ modelsConfigFile: file });
    client = new OpenAI({ apiKey: server.apiKey, baseURL: `${server.url}/v1`, maxRetries: 0 });
    for (const [name, script] of Object.entries(workflows)) await server.upload(name, script);
    await server.upload("later", workflows.later, { execution_mode: "async", version_bump: "patch" });
  });
  afterAll(async () => {
    await server?.close();
    await upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe("a workflow", () => {
    it("takes a string input as one user message and answers a Response", async () => {
      const response = await client.responses.create({ model: "workflow:echo", input: "What is Shaker?" });
      expect(response).toMatchObject({
        object: "response",
        status: "completed",
        model: "workflow:echo",
        error: null,
        output: [{ type: "message", status: "completed", role: "assistant", content: [{ type: "output_text", annotations: [] }] }],
        usage: { input_tokens: 0, output_tokens: 0, total_tokens: 0 },
      });
      const extra = response as any;
      expect(response.id).toBe(`resp_${extra.run_id}`);
      expect(extra.session_id).toMatch(/^sess_/);
      expect(extra.workflow_output.messages).toEqual([{ role: "user", content: "What is Shaker?" }]);
      expect(extra.workflow_output.input).toBeNull();
      expect(extra.workflow_output.params).toEqual({ stream: false });
      // output_text is the SDK's: the message's text, the output as JSON text.
      expect(JSON.parse(response.output_text)).toEqual(extra.workflow_output);
    });

    it("takes message items and instructions as ctx.messages, workflow_input as ctx.input, metadata and params", async () => {
      const response = await client.responses.create({
        model: "workflow:echo",
        instructions: "Be brief.",
        input: [
          { role: "user", content: "Hi" },
          { type: "message", role: "assistant", content: [{ type: "output_text", text: "Hello!", annotations: [] }] },
          {
            role: "user",
            content: [
              { type: "input_text", text: "What is " },
              { type: "input_text", text: "Shaker?" },
            ],
          },
        ],
        metadata: { team: "docs" },
        temperature: 0.2,
        ...({ workflow_input: { query: "shaker" } } as object),
      } as any);
      const out = (response as any).workflow_output;
      expect(out.messages).toEqual([
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hi" },
        { role: "assistant", content: "Hello!" },
        { role: "user", content: "What is Shaker?" },
      ]);
      expect(out.input).toEqual({ query: "shaker" });
      expect(out.metadata).toEqual({ team: "docs" });
      expect(out.params).toEqual({ temperature: 0.2, stream: false });
      expect(response.instructions).toBe("Be brief.");
      expect(response.metadata).toEqual({ team: "docs" });
    });

    it("refuses a request without input, and an unknown item type, naming the field", async () => {
      const none = await server.request("POST", "/v1/responses", { model: "workflow:echo" });
      expect(none.status).toBe(400);
      expect(none.body.error.param).toBe("input");
      const bad = await server.request("POST", "/v1/responses", { model: "workflow:echo", input: [{ type: "reasoning", summary: [] }] });
      expect(bad.status).toBe(400);
      expect(bad.body.error.param).toBe("input[0].type");
      const unknown = await server.request("POST", "/v1/responses", { model: "workflow:nope", input: "x" });
      expect(unknown.status).toBe(404);
    });

    it("streams the emitted values as deltas, then the output text, then response.completed; finalResponse() is the non-streamed response", async () => {
      const stream = client.responses.stream({ model: "workflow:progress", input: "capital of France?" });
      const types: string[] = [];
      const deltas: { delta: string; emitted?: unknown; output_text?: boolean }[] = [];
      const sequence: number[] = [];
      for await (const event of stream) {
        types.push(event.type);
        sequence.push(event.sequence_number);
        if (event.type === "response.output_text.delta") deltas.push(event as any);
      }
      const final = await stream.finalResponse();
      expect(types).toEqual([
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
      ]);
      expect(sequence).toEqual(types.map((_, i) => i));
      // The deltas are the stream's text of docs/api.md §3: the emitted values, a blank line, the output.
      expect(deltas.map((d) => d.delta)).toEqual(["searching…", '{"pages":2}', "\n\nParis."]);
      expect(deltas.map((d) => d.emitted)).toEqual(["searching…", { pages: 2 }, undefined]);
      expect(deltas[2].output_text).toBe(true);
      const plain = await client.responses.create({ model: "workflow:progress", input: "capital of France?" });
      expect(final.output_text).toBe("Paris.");
      expect(final.output_text).toBe(plain.output_text);
      expect(final.status).toBe("completed");
      expect((final as any).workflow_output).toBe("Paris.");
      expect(final.id).toBe(`resp_${(final as any).run_id}`);
    });

    it("streams only the rest of the output after emitted values that began it", async () => {
      const stream = client.responses.stream({ model: "workflow:tokens", input: "capital of France?" });
      let text = "";
      stream.on("response.output_text.delta", (event) => {
        text += event.delta;
      });
      const final = await stream.finalResponse();
      expect(text).toBe("Paris.");
      expect(final.output_text).toBe("Paris.");
    });

    it("answers a failed run with HTTP 500 workflow_error", async () => {
      const err = await client.responses.create({ model: "workflow:fails", input: "x" }).catch((e) => e);
      expect(err).toBeInstanceOf(OpenAI.APIError);
      expect(err.status).toBe(500);
      expect(err.code).toBe("workflow_error");
      expect(err.message).toContain("ValueError: no answer today");
    });

    it("ends a stream whose run fails after the start with response.failed", async () => {
      const stream = await client.responses.create({ model: "workflow:fails-midway", input: "x", stream: true });
      const events: any[] = [];
      for await (const event of stream) events.push(event);
      expect(events.map((e) => e.type)).toContain("response.output_text.delta");
      const failed = events.at(-1);
      expect(failed.type).toBe("response.failed");
      expect(failed.response.status).toBe("failed");
      expect(failed.response.error).toEqual({ code: "workflow_error", message: expect.stringContaining("broke after the first emit") });
      expect(failed.response.run_id).toMatch(/^run_/);
      expect(events.some((e) => e.type === "response.completed")).toBe(false);
    });

    it("frames SSE with event: lines, one type and sequence_number per data", async () => {
      const res = await fetch(`${server.url}/v1/responses`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "workflow:progress", input: "x", stream: true }),
      });
      expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
      const runId = res.headers.get("x-request-id");
      expect(runId).toMatch(/^run_/);
      const events = eventsOf(await res.text());
      for (const [i, e] of events.entries()) {
        expect(e.data.type).toBe(e.event);
        expect(e.data.sequence_number).toBe(i);
      }
      expect(events[0].data.response).toMatchObject({ id: `resp_${runId}`, status: "in_progress", output: [], run_id: runId });
    });

    it("answers an async workflow with 202 and a response in progress", async () => {
      const res = await server.request("POST", "/v1/responses", { model: "workflow:later", input: "x" });
      expect(res.status).toBe(202);
      expect(res.body).toMatchObject({ object: "response", status: "in_progress", output: [] });
      expect(res.headers.get("location")).toBe(`/v1/runs/${res.body.run_id}`);
    });
  });

  describe("a plain model, through the ModelProxy", () => {
    it("answers a Response translated from the upstream's chat completion, and records the call", async () => {
      const response = await client.responses.create({
        model: "m-plain",
        instructions: "Answer briefly.",
        input: "hello there",
        max_output_tokens: 50,
        ...({ session_id: "s-resp-plain" } as object),
      } as any);
      expect(response.output_text).toBe("Echo: hello there");
      expect(response.status).toBe("completed");
      expect(response.usage?.input_tokens).toBeGreaterThan(0);
      const sent = upstream.requests.at(-1)!;
      expect(sent.path).toBe("/v1/chat/completions");
      expect(sent.body.messages).toEqual([
        { role: "system", content: "Answer briefly." },
        { role: "user", content: "hello there" },
      ]);
      expect(sent.body.max_tokens).toBe(50);
      expect(sent.body.input).toBeUndefined();
      expect(sent.body.session_id).toBeUndefined();
      const session = await server.request("GET", "/v1/sessions/s-resp-plain");
      expect(session.status).toBe(200);
      const calls = session.body.data.items.filter((item: any) => item.type === "model_call");
      expect(calls).toHaveLength(1);
      expect(calls[0]).toMatchObject({ model: "m-plain", status: "ok" });
      expect(response.id).toBe(`resp_${calls[0].call_id}`);
    });

    it("streams a plain model's answer as Responses events", async () => {
      const stream = client.responses.stream({ model: "m-plain", input: "stream me please" });
      let text = "";
      stream.on("response.output_text.delta", (event) => {
        text += event.delta;
      });
      const final = await stream.finalResponse();
      expect(text).toBe("Echo: stream me please");
      expect(final.output_text).toBe("Echo: stream me please");
      expect(final.status).toBe("completed");
      expect(final.usage?.total_tokens).toBeGreaterThan(0);
    });

    it("answers an upstream that fails for good with 502", async () => {
      upstream.plan("m-down", [{ status: 500 }, { status: 500 }, { status: 500 }]);
      const err = await client.responses.create({ model: "m-down", input: "x" }).catch((e) => e);
      expect(err.status).toBe(502);
      expect(err.code).toBe("upstream_error");
    });
  });
});
