import { type ClientRequest, request as httpRequest, type IncomingMessage } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AsyncQueue } from "../services/shared/queue.js";
import { alive, startTestServer, type TestServer, waitFor } from "./helpers.js";

// Emits as fast as it can; each value says when it was emitted and by which process.
const flood = `
import os, time
def execute(ctx):
    n = ctx.input.get("n", 20000)
    pad = "x" * ctx.input.get("size", 1000)
    for i in range(n):
        ctx.emit({"i": i, "t": time.time(), "pid": os.getpid(), "pad": pad})
    return {"n": n}
`;

const plain = "def execute(ctx):\n    return {'echo': ctx.input}\n";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** SseReader is a raw node:http streaming call whose reading the test controls (pause/resume). */
interface SseReader {
  req: ClientRequest;
  res: IncomingMessage;
  runId: string;
  /** events are the parsed `data:` payloads so far ("[DONE]" kept as the string). */
  events: unknown[];
  ended: Promise<void>;
  /** until resolves once check holds on the events read so far. */
  until(check: (events: unknown[]) => boolean): Promise<void>;
}

function openStream(server: TestServer, body: Record<string, unknown>): Promise<SseReader> {
  const url = new URL(`${server.url}/v1/chat/completions`);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      },
      (res) => {
        const events: unknown[] = [];
        let buffered = "";
        let waiters: (() => void)[] = [];
        res.setEncoding("utf8");
        res.on("data", (text: string) => {
          buffered += text;
          let cut;
          while ((cut = buffered.indexOf("\n\n")) >= 0) {
            const block = buffered.slice(0, cut);
            buffered = buffered.slice(cut + 2);
            if (!block.startsWith("data: ")) continue;
            const data = block.slice(6);
            events.push(data === "[DONE]" ? data : JSON.parse(data));
          }
          const w = waiters;
          waiters = [];
          for (const f of w) f();
        });
        const ended = new Promise<void>((done) => {
          res.on("end", done);
          res.on("close", done);
        });
        const until = async (check: (events: unknown[]) => boolean) => {
          while (!check(events)) {
            if (res.readableEnded || res.destroyed)
              throw new Error(`the stream ended first: ${JSON.stringify(events.slice(-2)).slice(0, 500)}`);
            await new Promise<void>((r) => waiters.push(r));
          }
        };
        resolve({ req, res, runId: String(res.headers["x-request-id"]), events, ended, until });
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify({ stream: true, ...body }));
  });
}

type Emitted = { i: number; t: number; pid: number; pad: string };
const emittedOf = (events: unknown[]) =>
  events.filter((e): e is { emitted: Emitted } => typeof e === "object" && e !== null && "emitted" in e).map((e) => e.emitted);

describe("backpressure: a slow SSE reader holds its run back", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer({ workers: 1 });
    await server.upload("flood", flood);
    await server.upload("flood-2s", flood, { timeout_seconds: 2 });
    await server.upload("plain", plain);
  });
  afterAll(async () => {
    await server?.close();
  });

  it("pauses the workflow while the reader pauses, keeps memory bounded, then delivers every value in order", async () => {
    const n = 20_000;
    const size = 1000;
    const stream = await openStream(server, { model: "workflow:flood", input: { n, size } });
    expect(stream.res.statusCode).toBe(200);
    await stream.until((e) => emittedOf(e).length >= 100);
    stream.res.pause();
    const pausedAt = Date.now() / 1000;
    let maxQueued = 0;
    for (let i = 0; i < 40; i++) {
      await sleep(100);
      maxQueued = Math.max(maxQueued, AsyncQueue.queuedInProcess());
    }
    const resumedAt = Date.now() / 1000;
    stream.res.resume();
    await stream.ended;

    const values = emittedOf(stream.events);
    expect(values.map((v) => v.i)).toEqual(Array.from({ length: n }, (_, i) => i));
    const final = stream.events.at(-2) as { output: unknown; choices: { finish_reason: string }[] };
    expect(final.output).toEqual({ n });
    expect(final.choices[0].finish_reason).toBe("stop");
    expect(stream.events.at(-1)).toBe("[DONE]");

    // Held back: only what fits in the pipes, sockets and the queue's high mark was emitted while
    // the reader paused, and the emits stopped well before it read on.
    const beforeResume = values.filter((v) => v.t < resumedAt);
    expect(beforeResume.length).toBeLessThan(n / 2);
    expect(beforeResume.at(-1)!.t).toBeLessThan(resumedAt - 1.5);
    expect(values.at(-1)!.t).toBeGreaterThan(resumedAt);
    // Bounded memory: the run's queue stays near its high mark (about a megabyte), far below the 20 MB
    // emitted. (Not process RSS: the run record keeps every emitted value anyway, and RSS is noisy.)
    expect(maxQueued).toBeLessThan(2000);
    expect(pausedAt).toBeLessThan(resumedAt);
  }, 60_000);

  it("keeps other runs of the same worker flowing while one run is paused", async () => {
    const stream = await openStream(server, { model: "workflow:flood", input: { n: 20_000 } });
    await stream.until((e) => emittedOf(e).length >= 10);
    stream.res.pause();
    const pid = emittedOf(stream.events)[0].pid;
    await sleep(1500); // the paused run's pipes fill and its child blocks in ctx.emit
    expect(alive(pid)).toBe(true);
    const other = await server.invoke({ model: "workflow:plain", input: { x: 1 } });
    expect(other.status).toBe(200);
    expect(other.body.output).toEqual({ echo: { x: 1 } });
    // A second streaming run of the same worker also flows to the end.
    const second = await openStream(server, { model: "workflow:flood", input: { n: 3000, size: 10 } });
    await second.ended;
    expect(emittedOf(second.events).map((v) => v.i)).toEqual(Array.from({ length: 3000 }, (_, i) => i));
    expect(second.events.at(-1)).toBe("[DONE]");
    expect(alive(pid)).toBe(true);
    stream.res.resume();
    await stream.ended;
    expect(emittedOf(stream.events)).toHaveLength(20_000);
    expect(stream.events.at(-1)).toBe("[DONE]");
  }, 60_000);

  it("still times out a paused run and kills its process", async () => {
    const stream = await openStream(server, { model: "workflow:flood-2s", input: { n: 1_000_000 } });
    await stream.until((e) => emittedOf(e).length >= 10);
    stream.res.pause();
    const pid = emittedOf(stream.events)[0].pid;
    await waitFor(() => !alive(pid), `process ${pid} to be killed by the timeout`);
    await waitFor(
      async () => (await server.request("GET", `/v1/runs/${stream.runId}`)).body.data.status === "timed_out",
      "the run to be recorded as timed out",
    );
    // Reading on, the stream ends with the timeout as its error event.
    stream.res.resume();
    await stream.ended;
    const last = stream.events.at(-1) as { error?: { message: string } };
    expect(last.error?.message).toContain("timeout");
    expect(emittedOf(stream.events).length).toBeLessThan(1_000_000);
  }, 60_000);

  it("kills a paused run's process when its reader disconnects", async () => {
    const stream = await openStream(server, { model: "workflow:flood", input: { n: 1_000_000 } });
    await stream.until((e) => emittedOf(e).length >= 10);
    stream.res.pause();
    const pid = emittedOf(stream.events)[0].pid;
    await sleep(1000);
    expect(alive(pid)).toBe(true);
    stream.req.destroy();
    await waitFor(() => !alive(pid), `process ${pid} to be killed`);
    await waitFor(
      async () => (await server.request("GET", `/v1/runs/${stream.runId}`)).body.data.status === "cancelled",
      "the run to be recorded as cancelled",
    );
    // The worker is not stuck on the dead child: a new run completes.
    const after = await server.invoke({ model: "workflow:plain", input: 2 });
    expect(after.status).toBe(200);
    expect(after.body.output).toEqual({ echo: 2 });
  }, 60_000);
});
