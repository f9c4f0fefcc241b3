import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DatastoreService } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { ExecutorService, LogLevel, RunSchema } from "../gen/shaker/executor/v1/executor_pb.js";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { fromValue } from "../services/shared/json.js";
import { startTestServer, type TestServer } from "./helpers.js";

// The server's own environment holds its secrets (upstream keys): no run may read them.
process.env.SHAKER_TEST_SERVER_SECRET = "server-side-secret-runs-must-not-see";
// One server for the whole file. ctx.http leaves through the Executor, which reaches the test's local
// target only when allowed.
const server: TestServer = await startTestServer({ workers: 1, maxNestingDepth: 3, httpAllow: ["127.0.0.1"] });
const auth = { headers: { authorization: `Bearer ${server.apiKey}` } };
const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
const executor = createClient(ExecutorService, transport);

const SECRET = "s3cr3t-value-that-must-not-leak";

async function record(runId: string) {
  const { run } = await executor.getRun({ runId }, auth);
  return run!;
}

const everything = `
import os, sys
from maitai_workflow import WorkflowContext

def execute(ctx: WorkflowContext):
    print("printed", ctx.secrets["token"])
    print("to stderr", file=sys.stderr)
    ctx.log("structured", level="warning", step=1)
    ctx.logger.info("via logger %s", "arg")
    ctx.emit("first")
    ctx.emit({"second": 2})
    return {
        "input": ctx.input, "messages": ctx.messages, "secret_names": sorted(ctx.secrets),
        "secret_ok": ctx.secrets["token"] == "${SECRET}", "metadata": ctx.metadata, "env": ctx.env,
        "os_environ": os.environ.get("GREETING"),
        "server_env": [k for k in os.environ if k in ("SHAKER_TEST_SERVER_SECRET", "SHAKER_API_KEY", "OPENAI_API_KEY")],
        "params": ctx.params, "session_id": ctx.session_id,
        "run_id": ctx.run_id, "type": type(ctx).__name__,
    }
`;

describe("ctx, from a real workflow through the real server", () => {
  let http: Server;
  let httpUrl: string;
  let dir: string;
  const seen: { method: string; url: string; body: string }[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "shaker-ctx-"));
    http = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        seen.push({ method: req.method!, url: req.url!, body });
        const status = req.url!.startsWith("/missing") ? 404 : 200;
        res.writeHead(status, { "content-type": "application/json", "x-test": "yes" });
        res.end(JSON.stringify({ path: req.url, method: req.method, body }));
      });
    });
    await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
    httpUrl = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
    await server.upload("everything", everything, { env: { GREETING: "hi" } });
  });
  afterAll(async () => {
    http.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("gives input, messages, secrets, metadata, env, params, session and run ids, and none of the server's environment", async () => {
    const res = await server.invoke({
      model: "workflow:everything",
      input: { q: 1 },
      messages: [{ role: "user", content: "hello" }],
      secrets: { token: SECRET },
      metadata: { team: "core" },
      session_id: "sess-ctx",
      temperature: 0.2,
      max_tokens: 5,
    });
    expect(res.status).toBe(200);
    expect(res.body.output).toEqual({
      input: { q: 1 },
      messages: [{ role: "user", content: "hello" }],
      secret_names: ["token"],
      secret_ok: true,
      metadata: { team: "core" },
      env: { GREETING: "hi" },
      os_environ: "hi",
      server_env: [],
      params: { temperature: 0.2, max_tokens: 5, stream: false },
      session_id: "sess-ctx",
      run_id: res.body.run_id,
      type: "WorkflowContext",
    });
  });

  it("gives None input and [] messages when absent, and generates a session id", async () => {
    const res = await server.invoke({ model: "workflow:everything", messages: [{ role: "user", content: "x" }], secrets: { token: "t" } });
    expect(res.status).toBe(200);
    expect(res.body.output.input).toBeNull();
    expect(res.body.output.session_id).toMatch(/^sess_/);
    const res2 = await server.invoke({ model: "workflow:everything", input: 5, secrets: { token: "t" } });
    expect(res2.body.output.messages).toEqual([]);
  });

  it("records emitted values, ctx.log, ctx.logger, print and stderr, with secrets redacted", async () => {
    const res = await server.invoke({ model: "workflow:everything", input: {}, secrets: { token: SECRET } });
    expect(res.status).toBe(200);
    const run = await record(res.body.run_id);
    expect(run.emitted.map((e) => fromValue(e.value))).toEqual(["first", { second: 2 }]);
    const logs = run.logs.map((l) => ({ level: l.level, message: l.message, source: l.source }));
    expect(logs).toContainEqual({ level: LogLevel.WARNING, message: "structured", source: "ctx" });
    expect(logs).toContainEqual({ level: LogLevel.INFO, message: "via logger arg", source: "ctx" });
    expect(logs).toContainEqual({ level: LogLevel.ERROR, message: "to stderr", source: "stderr" });
    const printed = logs.find((l) => l.source === "stdout")!;
    expect(printed.message).toContain("printed");
    expect(printed.message).not.toContain(SECRET);
    expect(run.logs.find((l) => l.message === "structured")!.fields).toEqual({ step: 1 });
    expect(JSON.stringify(toJson(RunSchema, run))).not.toContain(SECRET);
  });

  it("streams emitted values as chunks before the final one", async () => {
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:everything", input: {}, secrets: { token: "t" }, stream: true }),
    });
    const events = (await res.text())
      .split("\n\n")
      .filter((e) => e.startsWith("data: "))
      .map((e) => e.slice(6));
    expect(events.at(-1)).toBe("[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    expect(chunks.slice(0, 2).map((c) => c.emitted)).toEqual(["first", { second: 2 }]);
    expect(chunks[2].output_text).toBe(true);
    expect(chunks[3].choices[0].finish_reason).toBe("stop");
  });

  it("redacts a secret from a raised error's message and traceback", async () => {
    await server.upload("leaky", "def execute(ctx):\n    raise ValueError('bad token ' + ctx.secrets['token'])\n    return 1\n");
    const res = await server.invoke({ model: "workflow:leaky", input: {}, secrets: { token: SECRET } });
    expect(res.status).toBe(500);
    expect(res.body.error.message).toContain("ValueError: bad token");
    expect(res.body.error.message).not.toContain(SECRET);
    const { runs } = await executor.listRuns({ workflowRefName: "leaky" }, auth);
    const run = await record(runs[0].runId);
    expect(run.error?.traceback).toContain("ValueError");
    expect(run.error?.message).not.toContain(SECRET);
    expect(run.error?.traceback).not.toContain(SECRET);
    expect(JSON.stringify(run.input)).not.toContain(SECRET);
  });

  it("makes HTTP requests against a local server and records method, host, status and duration", async () => {
    await server.upload(
      "fetcher",
      `
from shaker import HttpError

def execute(ctx):
    base = ctx.input["base"]
    got = ctx.http.get(base + "/items", params={"q": "a b"})
    posted = ctx.http.post(base + "/items", json={"name": "x"})
    missing = ctx.http.get(base + "/missing")
    try:
        ctx.http.get("http://127.0.0.1:1/refused", timeout=2)
        refused = None
    except HttpError as e:
        refused = str(e)
    return {"got": got.json(), "status": got.status, "ok": got.ok, "header": got.headers.get("x-test"),
            "posted": posted.json()["body"], "missing": [missing.status, missing.ok], "refused": refused}
`,
    );
    const res = await server.invoke({ model: "workflow:fetcher", input: { base: httpUrl } });
    expect(res.status).toBe(200);
    const out = res.body.output;
    expect(out.got).toEqual({ path: "/items?q=a+b", method: "GET", body: "" });
    expect(out.status).toBe(200);
    expect(out.ok).toBe(true);
    expect(out.header).toBe("yes");
    expect(JSON.parse(out.posted)).toEqual({ name: "x" });
    expect(out.missing).toEqual([404, false]);
    expect(out.refused).toContain("127.0.0.1:1");
    const run = await record(res.body.run_id);
    const host = new URL(httpUrl).host;
    expect(run.httpCalls.map((h) => [h.method, h.host, h.status])).toEqual([
      ["GET", host, 200],
      ["POST", host, 200],
      ["GET", host, 404],
      ["GET", "127.0.0.1:1", 0],
    ]);
    expect(run.httpCalls[0].durationMs).toBeGreaterThan(0);
    expect(run.httpCalls[3].error).not.toBe("");
  });

  it("loads accessories, caches them in the worker for later runs, and reads fallback_path only when absent", async () => {
    const fallback = join(dir, "fallback.json");
    writeFileSync(fallback, JSON.stringify({ from: "file" }));
    await server.upload(
      "accessorised",
      `
def execute(ctx):
    cached = "config_data" in ctx._accessories
    value = ctx.load_accessory("Config-Data", fallback_path="/nonexistent.json")
    other = ctx.load_accessory("absent", fallback_path=ctx.input["fallback"])
    try:
        ctx.load_accessory("absent")
        missing = None
    except KeyError as e:
        missing = str(e)
    return {"cached": cached, "value": value, "other": other, "missing": missing}
`,
      { accessories: [{ key: "config_data", content: { a: [1, 2] } }] },
    );
    const first = await server.invoke({ model: "workflow:accessorised", input: { fallback } });
    expect(first.status).toBe(200);
    expect(first.body.output).toMatchObject({ value: { a: [1, 2] }, other: { from: "file" } });
    expect(first.body.output.missing).toContain("absent");
    expect(first.body.output.cached).toBe(false);
    const second = await server.invoke({ model: "workflow:accessorised", input: { fallback } });
    expect(second.body.output).toMatchObject({ cached: true, value: { a: [1, 2] } });
  });

  it("runs nested workflows in the same session and stops at the depth limit with a clear error", async () => {
    await server.upload("child", "def execute(ctx):\n    return {'session': ctx.session_id, 'input': ctx.input}\n");
    await server.upload("parent", "def execute(ctx):\n    return ctx.workflows.run('child', input={'x': 1})\n");
    const res = await server.invoke({ model: "workflow:parent", input: {}, session_id: "sess-nest" });
    expect(res.status).toBe(200);
    expect(res.body.output).toEqual({ session: "sess-nest", input: { x: 1 } });
    const { runs } = await executor.listRuns({ sessionId: "sess-nest" }, auth);
    expect(runs.map((r) => [r.workflowRefName, r.depth])).toEqual(
      expect.arrayContaining([
        ["parent", 0],
        ["child", 1],
      ]),
    );

    await server.upload(
      "recurse",
      `
from shaker import WorkflowError

def execute(ctx):
    n = (ctx.input or {}).get("n", 0)
    try:
        return ctx.workflows.run("recurse", input={"n": n + 1})
    except WorkflowError as e:
        return {"deepest": n, "error": str(e)}
`,
    );
    const deep = await server.invoke({ model: "workflow:recurse", input: { n: 0 } });
    expect(deep.status).toBe(200);
    expect(deep.body.output.deepest).toBe(3);
    expect(deep.body.output.error).toContain("nesting is limited to 3 levels");

    await server.upload("missing-child", "def execute(ctx):\n    return ctx.workflows.run('nope')\n");
    const missing = await server.invoke({ model: "workflow:missing-child", input: {} });
    expect(missing.status).toBe(500);
    expect(missing.body.error.message).toContain("WorkflowError");
  });

  it("keeps two runs of the same workflow from seeing each other's module state or temporary files", async () => {
    await server.upload(
      "stateful",
      `
import os, tempfile

SEEN = []

def execute(ctx):
    SEEN.append(ctx.run_id)
    previous = (ctx.input or {}).get("previous")
    path = os.path.join(tempfile.gettempdir(), "note.txt")
    with open(path, "w") as f:
        f.write(ctx.run_id)
    return {"seen": list(SEEN), "path": path, "tmpdir": os.environ["TMPDIR"],
            "previous_visible": bool(previous) and os.path.exists(previous)}
`,
    );
    const a = await server.invoke({ model: "workflow:stateful", input: {} });
    const b = await server.invoke({ model: "workflow:stateful", input: { previous: a.body.output.path } });
    expect(a.body.output.seen).toEqual([a.body.run_id]);
    expect(b.body.output.seen).toEqual([b.body.run_id]);
    expect(a.body.output.path).not.toBe(b.body.output.path);
    expect(b.body.output.previous_visible).toBe(false);
  });

  it("refuses a run's token once the run has ended (a token a workflow leaks is of no use afterwards)", async () => {
    await server.upload(
      "leaky",
      `
def execute(ctx):
    ctx.embeddings.create(["works while the run lives"], model="shaker-local")
    return {"token": ctx._rpc._token}
`,
    );
    const res = await server.invoke({ model: "workflow:leaky", input: {} });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const token: string = res.body.output.token;
    expect(token.startsWith("srt.")).toBe(true);
    const modelproxy = createClient(ModelProxyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const err = await modelproxy
      .embeddings({ body: { input: ["after the run"], model: "shaker-local" } }, { headers: { authorization: `Bearer ${token}` } })
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(err?.code).toBe(Code.Unauthenticated);
    expect(err?.rawMessage).toBe("the run this token was given to has ended");
  });

  it("calls chat (plain and stream) and embeddings through the ModelProxy", async () => {
    await server.upload(
      "modeller",
      `
def execute(ctx):
    plain = ctx.chat.completions.create(model="shaker-local", intent="test")
    chunks = list(ctx.chat.completions.create(model="shaker-local", stream=True))
    emb = ctx.embeddings.create(["one text", "another"], model="shaker-local")
    return {"content": plain["choices"][0]["message"]["content"], "chunks": len(chunks),
            "streamed": "".join((c.get("choices") or [{}])[0].get("delta", {}).get("content") or "" for c in chunks),
            "dims": [len(d["embedding"]) for d in emb["data"]]}
`,
    );
    const res = await server.invoke({
      model: "workflow:modeller",
      messages: [{ role: "user", content: "hello there" }],
      session_id: "sess-models",
    });
    expect(res.status).toBe(200);
    expect(typeof res.body.output.content).toBe("string");
    expect(res.body.output.chunks).toBeGreaterThan(0);
    expect(res.body.output.streamed.length).toBeGreaterThan(0);
    expect(res.body.output.dims).toHaveLength(2);
    expect(res.body.output.dims[0]).toBeGreaterThan(0);
    expect(res.body.output.dims[0]).toBe(res.body.output.dims[1]);
  });

  it("runs an agent with two Python tools", async () => {
    await server.upload(
      "agent",
      `
CALLS = []

def add(a: int, b: int) -> int:
    """Adds two integers."""
    CALLS.append("add")
    return a + b

def shout(text: str) -> str:
    """Upper-cases a text."""
    CALLS.append("shout")
    return text.upper()

def execute(ctx):
    result = ctx.agents.run(messages=[{"role": "user", "content": "add 2 and 3, then shout it"}],
                            tools=[add, shout], model="shaker-local", max_iterations=5)
    return {"iterations": result["iterations"], "calls": CALLS,
            "tool_messages": sum(1 for m in result["messages"] if m["role"] == "tool"),
            "content": result["content"]}
`,
    );
    const res = await server.invoke({ model: "workflow:agent", input: {} });
    expect(res.status).toBe(200);
    expect(res.body.output.iterations).toBeGreaterThanOrEqual(2);
    expect(res.body.output.tool_messages).toBeGreaterThanOrEqual(1);
    expect(res.body.output.calls.length).toBe(res.body.output.tool_messages);
  });

  it("upserts, gets and searches a bound datastore", async () => {
    const datastore = createClient(DatastoreService, transport);
    await datastore.createStore({ name: "notes" }, auth);
    await server.upload(
      "librarian",
      `
def execute(ctx):
    n = ctx.datastore.upsert("notes", [{"id": "a", "text": "the quick brown fox", "metadata": {"k": 1}},
                                       {"id": "b", "text": "a lazy dog sleeps"}])
    got = ctx.datastore.get("notes", "a")
    none = ctx.datastore.get("notes", "zzz")
    many = ctx.datastore.get_many("notes", ["b", "zzz", "a"])
    hits = ctx.datastore.search("notes", query="fox", limit=5)
    return {"n": n, "got": got, "none": none, "many": [r["id"] for r in many], "hits": [h["id"] for h in hits]}
`,
      { datastores: [{ name: "notes", write: true }] },
    );
    const res = await server.invoke({ model: "workflow:librarian", input: {} });
    expect(res.status).toBe(200);
    expect(res.body.output).toMatchObject({
      n: 2,
      got: { id: "a", text: "the quick brown fox", metadata: { k: 1 } },
      none: null,
      many: ["b", "a"],
    });
    expect(res.body.output.hits[0]).toBe("a");
  });
});
