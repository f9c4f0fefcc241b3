// The server SIGKILLed in the middle of runs that call a model, sleep, and call it again: after a
// restart on the same port and data directory, each run resumes from its journal. The fake upstream
// sees each first call exactly once, callers get the right answers through their SDK's own retries,
// and run records keep both attempts.

import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer as createHttpServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FreshDatabase, freshDatabase, testDialect } from "../databases.js";
import { type FakeUpstream, startFakeUpstream, writeFakeModelsConfig } from "../fake-upstream.js";
import { freePort, type ServerProcess, startServerProcess, stopServerProcess } from "./process.js";

const key = "sk-shaker-durable-test";

/** tablesHolding names the tables of a PostgreSQL database with a row whose text holds `value` (bytea columns as hex). */
async function tablesHolding(url: string, value: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows: tables } = await client.query(
      "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN ('registry', 'executor', 'modelproxy', 'datastore')",
    );
    const holding: string[] = [];
    for (const { table_schema, table_name } of tables) {
      const { rows } = await client.query(
        `SELECT 1 FROM "${table_schema}"."${table_name}" t WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0 LIMIT 1`,
        [value, Buffer.from(value).toString("hex")],
      );
      if (rows.length > 0) holding.push(`${table_schema}.${table_name}`);
    }
    return holding;
  } finally {
    await client.end();
  }
}

/** Makes a model call, sleeps (the server is killed meanwhile), makes another, and answers. */
const twoCalls = `
import time
def execute(ctx):
    tag = ctx.input["tag"]
    first = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "first " + tag}])
    ctx.emit("first done")
    time.sleep(ctx.input.get("sleep", 4) if ctx.run_attempt == 1 else 0.2)
    second = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "second " + tag}])
    ctx.emit("second done")
    return {"first": first["choices"][0]["message"]["content"], "second": second["choices"][0]["message"]["content"],
            "attempt": ctx.run_attempt}
`;

/** Makes every kind of platform call, then a nested run that is in flight when the server is killed. */
const everything = `
def execute(ctx):
    tag = ctx.input["tag"]
    said = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "everything " + tag}])
    posted = ctx.http.post(ctx.input["url"], json={"tag": tag})
    ctx.datastore.upsert("notes", [{"id": tag, "text": "note " + tag}])
    found = ctx.datastore.get("notes", tag)
    child = ctx.workflows.run("nested-child", input={"tag": tag})
    return {"said": said["choices"][0]["message"]["content"], "posted": posted.text, "found": found["text"],
            "child": child, "attempt": ctx.run_attempt}
`;

const nestedChild = `
import time
def execute(ctx):
    said = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "child " + ctx.input["tag"]}])
    time.sleep(4 if ctx.run_attempt == 1 else 0.1)
    return {"said": said["choices"][0]["message"]["content"], "attempt": ctx.run_attempt}
`;

/** Its second model call holds a secret: it is not journaled, and is made again on resume. */
const withSecret = `
import time
def execute(ctx):
    tag = ctx.input["tag"]
    plain = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "plain " + tag}])
    secret = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": "secret " + tag + " " + ctx.secrets["TOKEN"]}])
    time.sleep(4 if ctx.run_attempt == 1 else 0.1)
    return {"plain": plain["choices"][0]["message"]["content"], "attempt": ctx.run_attempt, "long": len(secret["choices"][0]["message"]["content"]) > 10}
`;

/** Not replay-safe: its prompt holds the time, so a resumed run's first call does not match the journal. */
const clock = `
import time
def execute(ctx):
    tag = ctx.input["tag"]
    first = ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": f"clock {tag} {time.time()}"}])
    time.sleep(4 if ctx.run_attempt == 1 else 0.1)
    return {"said": first["choices"][0]["message"]["content"].split(" ")[1], "attempt": ctx.run_attempt}
`;

/** Emits a value every 0.4 s, ten times, with a model call before each from the fifth on. */
const ticker = `
import time
def execute(ctx):
    for i in range(10):
        if i >= 5:
            ctx.chat.completions.create(model="primary", messages=[{"role": "user", "content": f"tick {ctx.input['tag']} {i}"}])
        ctx.emit(f"tick {i}")
        time.sleep(0.4 if ctx.run_attempt == 1 else 0.05)
    return "done"
`;

describe("runs resumed after the server is killed", () => {
  let upstream: FakeUpstream;
  let target: Server;
  let posts = 0;
  let server: ServerProcess | undefined;
  let env: Record<string, string>;
  let url: string;
  /** database keeps the server's tables under SHAKER_TEST_DIALECT=postgresql: the same one across restarts. */
  let database: FreshDatabase | undefined;
  const dir = mkdtempSync(join(tmpdir(), "shaker-durable-"));
  const seen = (text: string) => upstream.requests.filter((r) => JSON.stringify(r.body?.messages ?? []).includes(text)).length;

  async function api(method: string, path: string, body?: unknown) {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json().catch(() => undefined)) as any };
  }

  async function until(what: string, check: () => boolean | Promise<boolean>, ms = 30_000) {
    const deadline = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * crash SIGKILLs the server and starts it again on the same port and data. The upstream answers a
   * call a moment before the server journals it: the runs it interrupts are asleep well after that.
   */
  async function crash() {
    await new Promise((r) => setTimeout(r, 500));
    await stopServerProcess(server!, "SIGKILL");
    server = await startServerProcess(env);
    expect(server.url).toBe(url);
  }

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    target = createHttpServer((req, res) => {
      posts++;
      req.resume();
      res.end("posted");
    });
    await new Promise<void>((resolve) => target.listen(0, "127.0.0.1", resolve));
    const port = await freePort();
    database = testDialect === "postgresql" ? await freshDatabase() : undefined;
    env = {
      ...(database ? { SHAKER_DATABASE_URL: database.url } : {}),
      SHAKER_DATA_DIR: join(dir, "data"),
      SHAKER_API_KEY: key,
      SHAKER_MODELS_CONFIG: writeFakeModelsConfig(dir, upstream, {}),
      PORT: String(port),
      SHAKER_SANDBOX: "none",
      SHAKER_HTTP_ALLOW: "127.0.0.1",
    };
    server = await startServerProcess(env);
    url = server.url;
    expect((await api("POST", "/v1/datastores", { name: "notes" })).status).toBe(201);
    for (const [ref, script, extra] of [
      ["everything", everything, { datastores: [{ name: "notes", write: true }] }],
      ["nested-child", nestedChild, {}],
      ["with-secret", withSecret, {}],
      ["two-calls", twoCalls, {}],
      ["two-calls-async", twoCalls, { execution_mode: "async" }],
      ["clock", clock, {}],
      ["ticker", ticker, {}],
    ] as const) {
      expect((await api("POST", "/v1/workflows/upload", { workflow_ref_name: ref, script, ...extra })).status).toBe(201);
    }
  });
  afterAll(async () => {
    if (server) await stopServerProcess(server, "SIGKILL");
    await database?.drop();
    await upstream?.close();
    target?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("resumes 20 runs in flight: each caller's own SDK retry gets the right answer, no model call is made twice", async () => {
    // The SDK retries a dropped connection on its own; more retries than the default 2 cover the
    // server's restart time on a slow machine.
    const client = new OpenAI({ apiKey: key, baseURL: `${url}/v1`, maxRetries: 6 });
    const tags = Array.from({ length: 20 }, (_, i) => `r${i}x`);
    const answers = tags.map((tag) =>
      client.chat.completions
        .create({ model: "workflow:two-calls", messages: [{ role: "user", content: "go" }], ...({ input: { tag } } as object) })
        .withResponse(),
    );
    const targetUrl = `http://127.0.0.1:${(target.address() as { port: number }).port}/hook`;
    const all = client.chat.completions
      .create({
        model: "workflow:everything",
        messages: [{ role: "user", content: "go" }],
        ...({ input: { tag: "e1x", url: targetUrl } } as object),
      })
      .withResponse();
    const secretValue = "tok-9f8e7d6c5b4a";
    const secret = client.chat.completions
      .create({
        model: "workflow:with-secret",
        messages: [{ role: "user", content: "go" }],
        ...({ input: { tag: "s1x" }, secrets: { TOKEN: secretValue } } as object),
      })
      .withResponse();
    await until("every run's first model call, the nested run's, and the secret one", () =>
      [...tags.map((t) => `first ${t}`), "child e1x", `secret s1x ${secretValue}`].every((t) => seen(t) === 1),
    );
    await crash();
    const done = await Promise.all(answers);

    // Every kind of call answered from the journal; the nested run resumed (not run again) by its parent's replay.
    const { data: allData, response: allResponse } = await all;
    expect((allData as any).output).toEqual({
      said: "Echo: everything e1x",
      posted: "posted",
      found: "note e1x",
      child: { said: "Echo: child e1x", attempt: 2 },
      attempt: 2,
    });
    expect(seen("everything e1x")).toBe(1);
    expect(seen("child e1x")).toBe(1);
    expect(posts).toBe(1);
    const parentRun = (await api("GET", `/v1/runs/${allResponse.headers.get("x-request-id")}`)).body.data;
    const children = (await api("GET", "/v1/runs?workflow=nested-child")).body.data;
    expect(children).toHaveLength(1);
    expect(children[0]).toMatchObject({ parent_run_id: parentRun.run_id, status: "succeeded", run_attempt: 2 });

    // The call that held a secret was made again; the other was not; no secret reached the disk.
    const { data: secretData, response: secretResponse } = await secret;
    expect((secretData as any).output).toEqual({ plain: "Echo: plain s1x", attempt: 2, long: true });
    expect(seen("plain s1x")).toBe(1);
    expect(seen(`secret s1x ${secretValue}`)).toBe(2);
    const secretRun = (await api("GET", `/v1/runs/${secretResponse.headers.get("x-request-id")}`)).body.data;
    expect(secretRun.unjournaled_calls).toBe(1);
    expect(secretRun.warnings.join("\n")).toContain("held a secret value");
    for (const file of readdirSync(env.SHAKER_DATA_DIR)) {
      expect(readFileSync(join(env.SHAKER_DATA_DIR, file)).includes(secretValue), file).toBe(false);
    }
    if (database) expect(await tablesHolding(database.url, secretValue)).toEqual([]);

    for (const [i, { data, response }] of done.entries()) {
      const output = (data as any).output;
      expect(output).toEqual({ first: `Echo: first ${tags[i]}`, second: `Echo: second ${tags[i]}`, attempt: 2 });
      const runId = response.headers.get("x-request-id")!;
      const { body } = await api("GET", `/v1/runs/${runId}`);
      expect(body.data.status).toBe("succeeded");
      expect(body.data.run_attempt).toBe(2);
      expect(body.data.attempts.map((a: any) => [a.attempt, a.interrupted])).toEqual([
        [1, true],
        [2, false],
      ]);
      for (const a of body.data.attempts) expect(Date.parse(a.ended_at)).toBeGreaterThanOrEqual(Date.parse(a.started_at));
    }
    for (const t of tags) {
      expect(seen(`first ${t}`), `first call of ${t}`).toBe(1);
      expect(seen(`second ${t}`), `second call of ${t}`).toBe(1);
    }
    const runs = await api("GET", "/v1/runs?workflow=two-calls&limit=100");
    expect(runs.body.data).toHaveLength(20);
  });

  it("resumes an async run without secrets on its own, and fails one with secrets, saying why", async () => {
    const plain = await api("POST", "/v1/chat/completions", { model: "workflow:two-calls-async", input: { tag: "async-plain" } });
    const secret = await api("POST", "/v1/chat/completions", {
      model: "workflow:two-calls-async",
      input: { tag: "async-secret" },
      secrets: { TOKEN: "s3cr3t-value-123" },
    });
    expect(plain.status).toBe(202);
    expect(secret.status).toBe(202);
    await until("both runs' first model calls", () => seen("first async-plain") === 1 && seen("first async-secret") === 1);
    await crash();
    let record: any;
    await until("the async run to finish on its own", async () => {
      record = (await api("GET", `/v1/runs/${plain.body.run_id}`)).body.data;
      return record.status === "succeeded";
    });
    expect(record.output).toEqual({ first: "Echo: first async-plain", second: "Echo: second async-plain", attempt: 2 });
    expect(record.run_attempt).toBe(2);
    expect(seen("first async-plain")).toBe(1);
    const failed = (await api("GET", `/v1/runs/${secret.body.run_id}`)).body.data;
    expect(failed.status).toBe("failed");
    expect(failed.error.type).toBe("ServerRestarted");
    expect(failed.error.message).toContain("secrets");
    expect(JSON.stringify(failed)).not.toContain("s3cr3t-value-123");
  });

  it("resumes a script that is not replay-safe: the replay stops at the first call that differs, with a warning", async () => {
    const client = new OpenAI({ apiKey: key, baseURL: `${url}/v1`, maxRetries: 6 });
    const answer = client.chat.completions
      .create({ model: "workflow:clock", messages: [{ role: "user", content: "go" }], ...({ input: { tag: "tock" } } as object) })
      .withResponse();
    await until("the first model call", () => seen("clock tock") === 1);
    await crash();
    const { data, response } = await answer;
    expect((data as any).output).toEqual({ said: "clock", attempt: 2 });
    const record = (await api("GET", `/v1/runs/${response.headers.get("x-request-id")}`)).body.data;
    expect(record.run_attempt).toBe(2);
    expect(record.warnings.join("\n")).toMatch(
      /replay stopped at ctx call 0 \(shaker\.modelproxy\.v1\.ModelProxyService\/ChatCompletion\)/,
    );
    // Live again from the call that differed: the model was asked a second time.
    expect(seen("clock tock")).toBe(2);
  });

  it("lets a stream cut by the crash rejoin with Last-Event-ID, losing and duplicating nothing", async () => {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:ticker", input: { tag: "cut" }, stream: true }),
    });
    const runId = res.headers.get("x-request-id")!;
    const reader = res.body!.getReader();
    let text = "";
    await until("seven ticks", async () => {
      const chunk = await reader.read();
      text += new TextDecoder().decode(chunk.value ?? new Uint8Array());
      return (text.match(/"event_id"/g) ?? []).length >= 7 || chunk.done;
    });
    await crash();
    const ids = [...text.matchAll(/"event_id":"([^"]+)"/g)].map((m) => m[1]);
    const got = [...text.matchAll(/"emitted":"([^"]+)"/g)].map((m) => m[1]);
    const rejoined = await fetch(`${url}/v1/runs/${runId}/events`, {
      headers: { authorization: `Bearer ${key}`, "last-event-id": ids.at(-1)! },
    });
    expect(rejoined.status).toBe(200);
    const body = await rejoined.text();
    const rest = [...body.matchAll(/^event: emitted\ndata: (.+)$/gm)].map((m) => JSON.parse(m[1]).value);
    expect([...got, ...rest]).toEqual(Array.from({ length: 10 }, (_, i) => `tick ${i}`));
    expect(body).toMatch(/event: end\ndata: .*"status":"succeeded"/);
    for (let i = 5; i < 7; i++) expect(seen(`tick cut ${i}`), `tick ${i}'s model call`).toBe(1);
  });

  it("leaves no run in flight and the server serving", async () => {
    await until("no run left running", async () => (await api("GET", "/v1/runs?status=running")).body.data.length === 0);
    const ok = await api("POST", "/v1/chat/completions", { model: "workflow:two-calls", input: { tag: "after", sleep: 0 } });
    expect(ok.body.output.attempt).toBe(1);
  });
});
