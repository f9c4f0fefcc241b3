// Load: 1,000 concurrent streaming invocations complete with no error.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "../helpers.js";

const CONCURRENT = Number(process.env.LOAD_CONCURRENT ?? 1000);

const workflow = `
import time
def execute(ctx):
    for i in range(3):
        ctx.emit(i)
        time.sleep(0.3)
    return {"n": ctx.input["n"]}
`;

describe("load", () => {
  let server: TestServer;
  beforeAll(async () => {
    // One client address opens all 1,000 connections: lift the per-address cap a server has for strangers.
    server = await startTestServer({
      workers: 2,
      maxConcurrentRuns: CONCURRENT,
      maxConcurrentRunsPerAccount: CONCURRENT,
      sandbox: "auto",
      maxConnectionsPerAddress: 0,
    });
    await server.upload("steady", workflow, { timeout_seconds: 600 });
  });
  afterAll(() => server.close());

  it(`completes ${CONCURRENT} concurrent streaming invocations with no error`, async () => {
    const started = Date.now();
    // Every connection is accepted at once: the listener's accept queue holds the burst (Node's
    // default of 511 overflowed here, and some of the 1,000 were reset before any answer).
    const results = await Promise.all(
      Array.from({ length: CONCURRENT }, async (_, n) => {
        const res = await fetch(`${server.url}/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
          body: JSON.stringify({ model: "workflow:steady", input: { n }, stream: true }),
        });
        const text = await res.text();
        const events = text
          .split("\n\n")
          .filter((b) => b.startsWith("data: {"))
          .map((b) => JSON.parse(b.slice(6)));
        return { status: res.status, events, done: text.endsWith("data: [DONE]\n\n") };
      }),
    );
    process.stdout.write(`load: ${CONCURRENT} streams in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
    const failures = results.filter((r) => r.status !== 200 || !r.done || r.events.some((e) => e.error));
    expect(failures.slice(0, 3)).toEqual([]);
    for (const [n, r] of results.entries()) {
      expect(r.events.filter((e) => "emitted" in e).map((e) => e.emitted)).toEqual([0, 1, 2]);
      expect(r.events.at(-1).output).toEqual({ n });
    }
    // Every process is gone afterwards: only the workers remain.
    expect(server.shaker.workerPids().length).toBe(2);
  });
});
