import OpenAI, { APIError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer, waitFor } from "./helpers.js";

// The official SDKs retry 408, 409, 429 and every 5xx twice by default. A run that raised or timed
// out would run again in full on each retry, so those answers say `x-should-retry: false`. These
// tests use the real `openai` client with its DEFAULT retry settings, as a new user would.

const raises = `
def execute(ctx):
    if (ctx.input or {}).get("ok"):
        return "fine"
    raise ValueError("no retry, please")
`;

const sleeper = `
import time
def execute(ctx):
    ctx.emit("started")
    time.sleep((ctx.input or {}).get("seconds", 30))
    return "woke"
`;

const failsMidway = `
def execute(ctx):
    ctx.emit("first")
    if (ctx.input or {}).get("ok"):
        return "fine"
    raise RuntimeError("broke after the first emit")
`;

describe("retry safety with the official openai client's default retries", () => {
  let server: TestServer;
  let client: OpenAI;

  beforeAll(async () => {
    server = await startTestServer({ maxConcurrentRunsPerAccount: 1 });
    // Default settings: maxRetries is 2.
    client = new OpenAI({ apiKey: server.apiKey, baseURL: `${server.url}/v1` });
    await server.upload("raises", raises);
    await server.upload("times-out", sleeper, { timeout_seconds: 1 });
    await server.upload("sleeper", sleeper);
    await server.upload("fails-midway", failsMidway);
  });
  afterAll(() => server.close());

  /** runsOf lists a workflow's run records, waiting until `runId` is among them. */
  async function runsOf(workflow: string, runId: string): Promise<any[]> {
    let runs: any[] = [];
    await waitFor(async () => {
      const res = await server.request("GET", `/v1/runs?workflow=${workflow}&limit=100`);
      expect(res.status).toBe(200);
      runs = res.body.data;
      return runs.some((r) => r.run_id === runId);
    }, `the record of ${runId}`);
    return runs;
  }

  /** invokeError invokes a workflow with the client and returns the APIError it throws. */
  async function invokeError(model: string, input: Record<string, unknown> = {}): Promise<APIError> {
    const err = await client.chat.completions.create({ model, messages: [{ role: "user", content: "go" }], ...({ input } as object) }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(APIError);
    return err as APIError;
  }

  it("runs a raising workflow exactly once, and the error names the run", async () => {
    const err = await invokeError("workflow:raises");
    expect(err.status).toBe(500);
    expect(err.code).toBe("workflow_error");
    expect(err.headers?.get("x-should-retry")).toBe("false");
    const runId = (err.error as any).run_id as string;
    expect(runId).toMatch(/^run_/);
    expect(err.requestID).toBe(runId);
    expect(err.headers?.get("x-request-id")).toBe(runId);

    const runs = await runsOf("raises", runId);
    expect(runs.map((r) => r.run_id)).toEqual([runId]);
    expect(runs[0].status).toBe("failed");
    // The run id leads to the traceback.
    const record = await server.request("GET", `/v1/runs/${runId}`);
    expect(record.status).toBe(200);
    expect(JSON.stringify(record.body)).toContain("no retry, please");
  });

  it("runs a timed-out workflow exactly once, and the caller waits one timeout", async () => {
    const started = Date.now();
    const err = await invokeError("workflow:times-out", { seconds: 30 });
    const waited = Date.now() - started;
    expect(err.status).toBe(408);
    expect(err.headers?.get("x-should-retry")).toBe("false");
    const runId = (err.error as any).run_id as string;
    expect(runId).toMatch(/^run_/);
    expect(err.requestID).toBe(runId);
    // One timeout (1 s), not three.
    expect(waited).toBeLessThan(2_900);

    const runs = await runsOf("times-out", runId);
    expect(runs.map((r) => r.run_id)).toEqual([runId]);
    expect(runs[0].status).toBe("timed_out");
  });

  it("names the run in the error event of a stream that fails after it started", async () => {
    const { data: stream, response } = await client.chat.completions
      .create({ model: "workflow:fails-midway", messages: [{ role: "user", content: "go" }], stream: true })
      .withResponse();
    const runId = response.headers.get("x-request-id");
    expect(runId).toMatch(/^run_/);
    let caught: unknown;
    try {
      for await (const _ of stream) {
        // the first emitted value, then the error event
      }
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(APIError);
    const err = caught as APIError;
    expect(err.code).toBe("workflow_error");
    expect((err.error as any).run_id).toBe(runId);
    expect(err.requestID).toBe(runId);
  });

  it("answers the per-account concurrency limit with 429 and retry-after", async () => {
    // The only run this account may have: it sleeps while the second invoke is refused.
    const { data: holder, response } = await client.chat.completions
      .create({
        model: "workflow:sleeper",
        messages: [{ role: "user", content: "go" }],
        stream: true,
        ...({ input: { seconds: 30 } } as object),
      })
      .withResponse();
    const holderId = response.headers.get("x-request-id")!;
    try {
      const err = await invokeError("workflow:raises", { ok: true });
      expect(err.status).toBe(429);
      expect(err.code).toBe("rate_limit_exceeded");
      expect(err.headers?.get("retry-after")).toBe("1");
      // No run started, so none is named.
      expect((err.error as any).run_id).toBeUndefined();
    } finally {
      const cancelled = await server.request("POST", `/v1/runs/${holderId}/cancel`);
      expect(cancelled.status).toBe(200);
      holder.controller.abort();
    }
  });
});
