import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FakeUpstream, startFakeUpstream, writeFakeModelsConfig } from "./fake-upstream.js";
import { startTestServer, type TestServer, waitFor } from "./helpers.js";

// OpenTelemetry end to end: an OTLP/HTTP receiver this test starts gets the spans of an invoke (the
// edge's server span, the run's span, a span per ctx call with the GenAI attributes for model
// calls), all in the caller's trace; the model upstream and a ctx.http host get its traceparent.

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes: { key: string; value: Record<string, unknown> }[];
  status?: { code?: number };
}

const workflow = `
def execute(ctx):
    said = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "traced"}])
    chunks = list(ctx.chat.completions.create(model="backup", messages=[{"role": "user", "content": "streamed"}], stream=True))
    posted = ctx.http.post(ctx.input["url"], json={})
    child = ctx.workflows.run("traced-child")
    return {"said": said["choices"][0]["message"]["content"], "chunks": len(chunks), "posted": posted.status, "child": child}
`;

const attr = (span: OtlpSpan, key: string) => {
  const v = span.attributes.find((a) => a.key === key)?.value;
  return v === undefined ? undefined : (v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : (v.boolValue ?? v.arrayValue)));
};

describe("traces over OTLP/HTTP", () => {
  let receiver: Server;
  let target: Server;
  let upstream: FakeUpstream;
  let server: TestServer;
  let dir: string;
  const spans: OtlpSpan[] = [];
  const targetHeaders: IncomingHttpHeaders[] = [];

  beforeAll(async () => {
    receiver = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        expect(req.url).toBe("/v1/traces");
        for (const rs of JSON.parse(body).resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) spans.push(...ss.spans);
        res.writeHead(200, { "content-type": "application/json" });
        res.end("{}");
      });
    });
    target = createServer((req, res) => {
      targetHeaders.push(req.headers);
      req.resume();
      res.end("ok");
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
    await new Promise<void>((r) => target.listen(0, "127.0.0.1", r));
    upstream = await startFakeUpstream();
    dir = mkdtempSync(join(tmpdir(), "shaker-otel-"));
    const receiverUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}`;
    server = await startTestServer(
      { modelsConfigFile: writeFakeModelsConfig(dir, upstream, {}), httpAllow: ["127.0.0.1"] },
      { OTEL_EXPORTER_OTLP_ENDPOINT: receiverUrl, OTEL_BSP_SCHEDULE_DELAY: "100", OTEL_SERVICE_NAME: "shaker-test" },
    );
    await server.upload("traced", workflow);
    await server.upload("traced-child", "def execute(ctx):\n    return 'child'\n");
  });
  afterAll(async () => {
    await server?.close();
    await upstream?.close();
    receiver?.close();
    target?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("traces an invoke in the caller's trace, a span per ctx call, and carries the trace upstream", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const callerSpan = "00f067aa0ba902b7";
    const url = `http://127.0.0.1:${(target.address() as { port: number }).port}/hook`;
    const res = await server.invoke({ model: "workflow:traced", input: { url } }, { traceparent: `00-${traceId}-${callerSpan}-01` });
    expect(res.status).toBe(200);
    expect(res.body.output).toMatchObject({ said: "Echo: traced", posted: 200, child: "child" });
    expect(res.headers.get("x-trace-id")).toBe(traceId);

    const named = (name: string) => spans.find((s) => s.traceId === traceId && s.name === name);
    await waitFor(
      () => ["POST /v1/chat/completions", "run traced", "run traced-child", "chat primary"].every((n) => named(n)),
      "the spans",
    );
    const edge = named("POST /v1/chat/completions")!;
    const run = named("run traced")!;
    expect(edge.parentSpanId).toBe(callerSpan);
    expect(edge.kind).toBe(2); // SERVER
    expect(attr(edge, "http.response.status_code")).toBe(200);
    expect(run.parentSpanId).toBe(edge.spanId);
    expect(attr(run, "shaker.run.id")).toBe(res.body.run_id);
    expect(attr(run, "shaker.run.status")).toBe("succeeded");

    // Every ctx call is a child of the run; model calls carry the GenAI attributes.
    const calls = spans.filter((s) => s.traceId === traceId && s.parentSpanId === run.spanId);
    expect(calls.map((s) => s.name).sort()).toEqual(["ExecutorService/Fetch", "ExecutorService/Run", "chat backup", "chat primary"]);
    const chat = named("chat primary")!;
    expect(attr(chat, "gen_ai.operation.name")).toBe("chat");
    expect(attr(chat, "gen_ai.request.model")).toBe("primary");
    expect(attr(chat, "gen_ai.response.model")).toBe("m-primary");
    expect(attr(chat, "gen_ai.usage.input_tokens")).toBeGreaterThan(0);
    expect(attr(chat, "gen_ai.usage.output_tokens")).toBeGreaterThan(0);
    expect(Number(BigInt((chat as any).endTimeUnixNano) - BigInt((chat as any).startTimeUnixNano))).toBeGreaterThan(0);
    expect(attr(named("chat backup")!, "gen_ai.usage.output_tokens")).toBeGreaterThan(0);

    // A nested run is a child of the call that started it.
    const nested = named("run traced-child")!;
    expect(nested.parentSpanId).toBe(named("ExecutorService/Run")!.spanId);

    // What the run reached joined the trace: the model upstream and the ctx.http host.
    const upstreamTrace = upstream.requests.filter((r) => String(r.headers.traceparent ?? "").includes(traceId));
    expect(upstreamTrace).toHaveLength(2);
    expect(upstreamTrace[0].headers.traceparent).toContain(chat.spanId);
    expect(targetHeaders.at(-1)!.traceparent).toContain(`${traceId}-${named("ExecutorService/Fetch")!.spanId}`);
  });

  it("starts a trace of its own for a caller that sends none, and says its id", async () => {
    const res = await server.invoke({ model: "workflow:traced-child", input: {} });
    const traceId = res.headers.get("x-trace-id")!;
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);
    await waitFor(() => spans.some((s) => s.traceId === traceId && s.name === "run traced-child"), "the run's span");
    const edge = spans.find((s) => s.traceId === traceId && s.name === "POST /v1/chat/completions")!;
    expect(edge.parentSpanId ?? "").toBe("");
  });

  it("marks a run that failed", async () => {
    await server.upload("traced-fails", "def execute(ctx):\n    if ctx.input:\n        raise ValueError('no')\n    return 1\n");
    const res = await server.invoke({ model: "workflow:traced-fails", input: { x: 1 } });
    expect(res.status).toBe(500);
    const traceId = res.headers.get("x-trace-id")!;
    await waitFor(() => spans.some((s) => s.traceId === traceId && s.name === "run traced-fails"), "the run's span");
    const run = spans.find((s) => s.traceId === traceId && s.name === "run traced-fails")!;
    expect(run.status?.code).toBe(2); // ERROR
    expect(attr(run, "shaker.run.status")).toBe("failed");
  });
});
