import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { type FakeUpstream, startFakeUpstream, writeFakeModelsConfig } from "./fake-upstream.js";
import { startTestServer, type TestServer, waitFor } from "./helpers.js";

// Retries that attach to the run they retry: Idempotency-Key, the official SDKs' own retries
// (X-Stainless-Retry-Count), rejoining a stream at GET /v1/runs/{id}/events, and the grace period
// a run keeps after its caller disconnects. Crashes and resuming are in test/reliability/durable.test.ts.

/** A workflow that makes one model call (counted by the fake upstream), emits, waits, and answers. */
const counted = `
import time
def execute(ctx):
    tag = (ctx.input or {}).get("tag", "")
    answer = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "count " + tag}])
    for i in range((ctx.input or {}).get("emits", 1)):
        ctx.emit(f"step {i}")
        time.sleep((ctx.input or {}).get("pause", 0))
    return {"tag": tag, "said": answer["choices"][0]["message"]["content"], "attempt": ctx.run_attempt}
`;

/** sse reads a whole Server-Sent Events answer into its events. */
async function readSse(res: Response): Promise<{ id?: string; event?: string; data: string }[]> {
  const text = await res.text();
  return text
    .split("\n\n")
    .filter((block) => block.trim() && !block.startsWith(":"))
    .map((block) => {
      const e: { id?: string; event?: string; data: string } = { data: "" };
      for (const line of block.split("\n")) {
        const at = line.indexOf(":");
        const [name, value] = [line.slice(0, at), line.slice(at + 1).trimStart()];
        if (name === "id") e.id = value;
        else if (name === "event") e.event = value;
        else if (name === "data") e.data += value;
      }
      return e;
    });
}

describe("runs that retries attach to", () => {
  let upstream: FakeUpstream;
  let server: TestServer;
  let dir: string;
  let keyB: string;
  const calls = (tag: string) => upstream.requests.filter((r) => JSON.stringify(r.body?.messages ?? []).includes(`count ${tag}`)).length;
  const chat = (body: Record<string, unknown>, headers: Record<string, string> = {}) => server.invoke(body, headers);

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    dir = mkdtempSync(join(tmpdir(), "shaker-durable-"));
    const modelsConfigFile = writeFakeModelsConfig(dir, upstream, {});
    server = await startTestServer({ modelsConfigFile, disconnectGraceMs: 1500 });
    await server.upload("counted", counted);
    const registry = createClient(RegistryService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    keyB = (await registry.createApiKey({ accountName: "tenant-b" }, { headers: { authorization: `Bearer ${server.apiKey}` } })).apiKey;
    await server.request(
      "POST",
      "/v1/workflows/upload",
      { workflow_ref_name: "counted", script: counted },
      { authorization: `Bearer ${keyB}` },
    );
  });
  afterAll(async () => {
    await server?.close();
    await upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function runCount(tag: string, key = server.apiKey): Promise<number> {
    const res = await server.request("GET", "/v1/runs?workflow=counted&limit=100", undefined, { authorization: `Bearer ${key}` });
    return res.body.data.filter((r: any) => r.input?.tag === tag).length;
  }

  describe("Idempotency-Key", () => {
    it("makes concurrent duplicates one run, each caller getting the same answer", async () => {
      const body = { model: "workflow:counted", input: { tag: "concurrent", pause: 0.5 } };
      const answers = await Promise.all(Array.from({ length: 5 }, () => chat(body, { "idempotency-key": "key-concurrent" })));
      for (const a of answers) expect(a.status).toBe(200);
      expect(new Set(answers.map((a) => a.body.run_id)).size).toBe(1);
      expect(answers.map((a) => JSON.stringify(a.body))).toEqual(Array(5).fill(JSON.stringify(answers[0].body)));
      expect(calls("concurrent")).toBe(1);
      expect(await runCount("concurrent")).toBe(1);
    });

    it("answers a sequential duplicate with the same status and body, running nothing", async () => {
      const body = { model: "workflow:counted", input: { tag: "sequential" } };
      const first = await chat(body, { "idempotency-key": "key-sequential" });
      const again = await chat(body, { "idempotency-key": "key-sequential" });
      expect(again.status).toBe(first.status);
      expect(again.body).toEqual(first.body);
      expect(again.headers.get("x-request-id")).toBe(first.body.run_id);
      expect(calls("sequential")).toBe(1);
      expect(await runCount("sequential")).toBe(1);
    });

    it("answers a duplicate of a failed run with the same error, running nothing", async () => {
      await server.upload(
        "raises-once",
        "def execute(ctx):\n    if ctx.input is None:\n        return 0\n    raise ValueError('boom ' + str(ctx.input))\n",
      );
      const body = { model: "workflow:raises-once", input: { n: 1 } };
      const first = await chat(body, { "idempotency-key": "key-failed" });
      const again = await chat(body, { "idempotency-key": "key-failed" });
      expect(first.status).toBe(500);
      expect(again.status).toBe(500);
      expect(again.body).toEqual(first.body);
      const runs = await server.request("GET", "/v1/runs?workflow=raises-once");
      expect(runs.body.data).toHaveLength(1);
    });

    it("refuses the same key with another body with a 409 naming the key", async () => {
      await chat({ model: "workflow:counted", input: { tag: "changed" } }, { "idempotency-key": "key-changed" });
      const res = await chat({ model: "workflow:counted", input: { tag: "changed", more: 1 } }, { "idempotency-key": "key-changed" });
      expect(res.status).toBe(409);
      expect(res.body.error.message).toContain("key-changed");
      expect(await runCount("changed")).toBe(1);
    });

    it("keeps keys per account", async () => {
      const body = { model: "workflow:counted", input: { tag: "per-account" } };
      const a = await chat(body, { "idempotency-key": "shared-key" });
      const b = await chat(body, { "idempotency-key": "shared-key", authorization: `Bearer ${keyB}` });
      expect(a.status).toBe(200);
      expect(b.status).toBe(200);
      expect(b.body.run_id).not.toBe(a.body.run_id);
      expect(calls("per-account")).toBe(2);
      expect(await runCount("per-account", keyB)).toBe(1);
    });

    it("streams a run in flight to a duplicate from its first event", async () => {
      const body = { model: "workflow:counted", input: { tag: "stream-dup", emits: 3, pause: 0.3 }, stream: true };
      const headers = { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json", "idempotency-key": "key-stream" };
      const first = fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers, body: JSON.stringify(body) });
      await waitFor(() => calls("stream-dup") === 1, "the first run's model call");
      await new Promise((r) => setTimeout(r, 400)); // at least one value emitted already
      const second = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers, body: JSON.stringify(body) });
      const [a, b] = await Promise.all([first.then(readSse), readSse(second)]);
      const contents = (events: { data: string }[]) =>
        events.filter((e) => e.data !== "[DONE]").map((e) => JSON.parse(e.data).choices[0].delta.content ?? null);
      expect(contents(b)).toEqual(contents(a));
      const output = JSON.parse(a.at(-2)!.data).output;
      expect(contents(a)).toEqual(["step 0", "step 1", "step 2", `\n\n${JSON.stringify(output)}`, null]);
      expect(calls("stream-dup")).toBe(1);
    });

    it("refuses a malformed key, naming the header", async () => {
      const res = await chat({ model: "workflow:counted", input: {} }, { "idempotency-key": "x".repeat(300) });
      expect(res.status).toBe(400);
      expect(res.body.error.param).toBe("Idempotency-Key");
    });
  });

  describe("the SDKs' own retries (X-Stainless-Retry-Count)", () => {
    it("attaches a retry of a run in flight to that run", async () => {
      const body = { model: "workflow:counted", input: { tag: "sdk-inflight", pause: 0.8 } };
      const first = chat(body);
      await waitFor(() => calls("sdk-inflight") === 1, "the first run's model call");
      const retry = await chat(body, { "x-stainless-retry-count": "1" });
      const original = await first;
      expect(retry.body.run_id).toBe(original.body.run_id);
      expect(retry.body).toEqual(original.body);
      expect(calls("sdk-inflight")).toBe(1);
    });

    it("answers a retry of a run that ended within its timeout with that run's answer", async () => {
      const body = { model: "workflow:counted", input: { tag: "sdk-ended" } };
      const first = await chat(body);
      const retry = await chat(body, { "x-stainless-retry-count": "2" });
      expect(retry.body).toEqual(first.body);
      expect(await runCount("sdk-ended")).toBe(1);
    });

    it("never attaches another account's retry", async () => {
      const body = { model: "workflow:counted", input: { tag: "sdk-other", pause: 0.5 } };
      const first = chat(body);
      await waitFor(() => calls("sdk-other") === 1, "the first run's model call");
      const other = await chat(body, { "x-stainless-retry-count": "1", authorization: `Bearer ${keyB}` });
      expect(other.status).toBe(200);
      expect(other.body.run_id).not.toBe((await first).body.run_id);
      expect(calls("sdk-other")).toBe(2);
    });

    it("starts a new run for the same body without the retry header", async () => {
      const body = { model: "workflow:counted", input: { tag: "sdk-fresh" } };
      const a = await chat(body);
      const b = await chat(body);
      expect(b.body.run_id).not.toBe(a.body.run_id);
      expect(await runCount("sdk-fresh")).toBe(2);
    });

    it("keeps a run going when the openai client times out and retries on its own", async () => {
      // The client gives up after 1 s and retries (its default behaviour on a timeout): one run.
      const client = new OpenAI({ apiKey: server.apiKey, baseURL: `${server.url}/v1`, timeout: 1000, maxRetries: 2 });
      const completion = await client.chat.completions.create({
        model: "workflow:counted",
        messages: [{ role: "user", content: "go" }],
        ...({ input: { tag: "sdk-timeout", emits: 3, pause: 0.6 } } as object),
      });
      expect((completion as any).output.tag).toBe("sdk-timeout");
      expect(calls("sdk-timeout")).toBe(1);
      expect(await runCount("sdk-timeout")).toBe(1);
    });
  });

  describe("GET /v1/runs/{id}/events", () => {
    it("rejoins a stream after Last-Event-ID, losing and duplicating nothing", async () => {
      const body = { model: "workflow:counted", input: { tag: "rejoin", emits: 5, pause: 0.3 }, stream: true };
      const abort = new AbortController();
      const res = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: abort.signal,
      });
      const runId = res.headers.get("x-request-id")!;
      // Read two emitted values, note the last one's event_id, and drop the connection.
      const reader = res.body!.getReader();
      let text = "";
      while ((text.match(/"event_id"/g) ?? []).length < 2) text += new TextDecoder().decode((await reader.read()).value);
      abort.abort();
      const ids = [...text.matchAll(/"event_id":"([^"]+)"/g)].map((m) => m[1]);
      const seen = [...text.matchAll(/"emitted":"([^"]+)"/g)].map((m) => m[1]);
      expect(seen).toEqual(["step 0", "step 1"]);

      const rejoined = await fetch(`${server.url}/v1/runs/${runId}/events`, {
        headers: { authorization: `Bearer ${server.apiKey}`, "last-event-id": ids[1] },
      });
      expect(rejoined.headers.get("content-type")).toContain("text/event-stream");
      const events = await readSse(rejoined);
      const rest = events.filter((e) => e.event === "emitted").map((e) => JSON.parse(e.data).value);
      expect([...seen, ...rest]).toEqual(["step 0", "step 1", "step 2", "step 3", "step 4"]);
      const end = events.at(-1)!;
      expect(end.event).toBe("end");
      expect(JSON.parse(end.data)).toMatchObject({ status: "succeeded", output: { tag: "rejoin" } });
      expect(calls("rejoin")).toBe(1);

      // An ended run's events come from its record, with the same ids.
      const replay = await readSse(
        await fetch(`${server.url}/v1/runs/${runId}/events?after=${ids[0]}`, { headers: { authorization: `Bearer ${server.apiKey}` } }),
      );
      expect(replay.filter((e) => e.event === "emitted").map((e) => JSON.parse(e.data).value)).toEqual([
        "step 1",
        "step 2",
        "step 3",
        "step 4",
      ]);
      expect(replay.find((e) => e.event === "emitted")!.id).toBe(ids[1]);
    });

    it("answers 404 for another account's run and 400 for a malformed cursor", async () => {
      const { body } = await chat({ model: "workflow:counted", input: { tag: "events-404" } });
      const other = await fetch(`${server.url}/v1/runs/${body.run_id}/events`, { headers: { authorization: `Bearer ${keyB}` } });
      expect(other.status).toBe(404);
      const bad = await fetch(`${server.url}/v1/runs/${body.run_id}/events`, {
        headers: { authorization: `Bearer ${server.apiKey}`, "last-event-id": "yesterday" },
      });
      expect(bad.status).toBe(400);
      expect((await bad.json()).error.param).toBe("after");
    });
  });

  describe("a caller that disconnects", () => {
    it("leaves its run the grace period, then the run is cancelled", async () => {
      const abort = new AbortController();
      const res = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "workflow:counted", input: { tag: "grace", emits: 20, pause: 0.5 }, stream: true }),
        signal: abort.signal,
      });
      const runId = res.headers.get("x-request-id")!;
      abort.abort();
      const status = async () => (await server.request("GET", `/v1/runs/${runId}`)).body.data.status;
      await new Promise((r) => setTimeout(r, 700));
      expect(await status()).toBe("running");
      await waitFor(async () => (await status()) === "cancelled", "the run to be cancelled after the grace period");
    });
  });
});
