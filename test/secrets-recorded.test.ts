import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { createRunRedactor, REDACTED, redactUrlUserInfo } from "../services/shared/redact.js";
import { startTestServer } from "./helpers.js";

// A secret usable as a host name label, so it can also be a URL's host.
const SECRET = "s3cr3t-tok-4f9a2c71";
// A multi-line secret: captured output is recorded line by line.
const PEM = "-----BEGIN TEST KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldY\nWVowMTIzNDU2Nzg5YWJjZGVmZ2hpamts\n-----END TEST KEY-----";
const PEM_LINES = PEM.split("\n").slice(1, 3);
// Not a secret, but URL user-info: never recorded either.
const URL_PASSWORD = "hunter2-userinfo-pw";

const seen: IncomingMessage[] = [];
const target = createServer((req, res) => {
  seen.push(req);
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ path: req.url, authorization: req.headers.authorization ?? null }));
});
await new Promise<void>((r) => target.listen(0, "127.0.0.1", r));
const port = (target.address() as AddressInfo).port;
const base = `http://127.0.0.1:${port}`;
const server = await startTestServer({ workers: 1, httpAllow: [`127.0.0.1:${port}`] });

afterAll(async () => {
  target.close();
  await server.close();
});

const child = `
def execute(ctx):
    key = (ctx.input or {}).get("key")
    print("child got", key)
    ctx.log("child log " + str(key), key=key)
    ctx.emit({"key": key})
    return {"input": ctx.input, "messages": ctx.messages, "metadata": ctx.metadata}
`;

const parent = `
from shaker import HttpError

EXECUTOR = "shaker.executor.v1.ExecutorService"

def execute(ctx):
    s = ctx.secrets["api"]
    base = ctx.input["base"]
    got = ctx.http.get(base.replace("http://", "http://user:" + s + "@") + "/userinfo", params={"token": s})
    ctx.http.get(base.replace("http://", "http://alice:${URL_PASSWORD}@") + "/plain")
    errors = []
    for url in ["http://" + s + ".invalid/dns", "http://127.0.0.1:1/" + s]:
        try:
            ctx.http.get(url, timeout=10)
        except HttpError as e:
            errors.append(str(e))
    print("printed", s)
    print(ctx.secrets["pem"])
    print("see https://alice:${URL_PASSWORD}@example.com/x")
    ctx.log("logged " + s, secret=s, **{s: "as a key"})
    ctx.emit({"emitted": s, s: 1})
    nested = ctx.workflows.run("secret-child", input={"key": s, "more": [s, "https://bob:${URL_PASSWORD}@h/"]},
                               messages=[{"role": "user", "content": "hi " + s}])
    direct = ctx._rpc.call(EXECUTOR, "Run", {"invocation": {
        "workflowRefName": "secret-child", "input": {"key": s}, "hasInput": True,
        "messages": [{"role": "user", "content": s}], "metadata": {"m": s, s: "key"}, "sessionId": ctx.session_id}})
    direct_output = direct["result"]["output"]
    return {
        "secret": s,
        "authorization": got.json()["authorization"],
        "errors": errors,
        "nested_received": nested["input"]["key"] == s and nested["messages"][0]["content"] == "hi " + s,
        "direct_received": direct_output["input"]["key"] == s and direct_output["metadata"]["m"] == s,
    }
`;

const raiser = `
def execute(ctx):
    s = ctx.secrets["api"]
    ctx.workflows.run("secret-child", input={"key": s})
    raise RuntimeError("failed with " + s + " at https://u:${URL_PASSWORD}@host/")
    return {}
`;

/** leaks lists what of the secrets a recorded text still holds. */
function leaks(text: string): string[] {
  return [SECRET, ...PEM_LINES, URL_PASSWORD].filter((v) => text.includes(v));
}

async function recordText(runId: string): Promise<string> {
  const res = await server.request("GET", `/v1/runs/${runId}`);
  expect(res.status).toBe(200);
  return JSON.stringify(res.body);
}

async function sessionRuns(sessionId: string): Promise<any[]> {
  const res = await server.request("GET", `/v1/runs?session_id=${sessionId}`);
  expect(res.status).toBe(200);
  return res.body.data;
}

describe("redaction helpers", () => {
  it("blanks URL user-info and every line of a multi-line secret", () => {
    expect(redactUrlUserInfo("GET https://u:p@ss@host:1/x?y=a@b and http://h/p@q")).toBe(
      `GET https://${REDACTED}@host:1/x?y=a@b and http://h/p@q`,
    );
    const redact = createRunRedactor([PEM, SECRET]);
    for (const line of PEM.split("\n")) expect(leaks(redact(line))).toEqual([]);
    expect(redact(`x https://user:${SECRET}@h/`)).toBe(`x https://${REDACTED}@h/`);
  });
});

describe("secrets are never recorded", () => {
  it("keeps a run's secrets and URL user-info out of its record and its nested runs' records, which still receive the real values", async () => {
    await server.upload("secret-child", child);
    await server.upload("secret-parent", parent);
    const res = await server.invoke({
      model: "workflow:secret-parent",
      input: { base },
      secrets: { api: SECRET, pem: PEM },
      metadata: { note: SECRET },
      session_id: "sess-secrets",
    });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const out = res.body.output;
    // The run itself worked with the real values.
    expect(out.secret).toBe(SECRET);
    expect(out.authorization).toBe(`Basic ${Buffer.from(`user:${SECRET}`).toString("base64")}`);
    expect(out.nested_received).toBe(true);
    expect(out.direct_received).toBe(true);
    expect(out.errors).toHaveLength(2);
    expect(seen.map((r) => r.url)).toContain(`/userinfo?token=${SECRET}`);

    const runs = await sessionRuns("sess-secrets");
    expect(runs.map((r) => r.workflow_ref_name).sort()).toEqual(["secret-child", "secret-child", "secret-parent"]);
    expect(leaks(JSON.stringify(runs))).toEqual([]);
    for (const run of runs) {
      const text = await recordText(run.run_id);
      expect(leaks(text), `${run.workflow_ref_name} ${run.run_id}: ${text}`).toEqual([]);
    }

    const parentRecord = JSON.parse(await recordText(res.body.run_id)).data;
    expect(parentRecord.output.secret).toBe(REDACTED);
    expect(parentRecord.metadata).toEqual({ note: REDACTED });
    expect(parentRecord.http_calls.map((h: any) => [h.host, h.status])).toEqual([
      [`127.0.0.1:${port}`, 200],
      [`127.0.0.1:${port}`, 200],
      [`${REDACTED}.invalid`, 0],
      ["127.0.0.1:1", 0],
    ]);
    expect(parentRecord.http_calls[2].error).not.toBe("");
    const logs = parentRecord.logs.map((l: any) => l.message);
    expect(logs).toContain(`printed ${REDACTED}`);
    expect(logs).toContain(`see https://${REDACTED}@example.com/x`);
    expect(logs).toContain(`logged ${REDACTED}`);
    expect(parentRecord.emitted[0].value).toEqual({ emitted: REDACTED, [REDACTED]: 1 });

    const children = runs.filter((r) => r.workflow_ref_name === "secret-child").map((r) => r.run_id);
    const childRecords = await Promise.all(children.map(async (id) => JSON.parse(await recordText(id)).data));
    const nested = childRecords.find((r) => r.input.more)!;
    expect(nested.parent_run_id).toBe(res.body.run_id);
    expect(nested.input).toEqual({ key: REDACTED, more: [REDACTED, `https://${REDACTED}@h/`] });
    expect(nested.output.messages).toEqual([{ role: "user", content: `hi ${REDACTED}` }]);
    const direct = childRecords.find((r) => !r.input.more)!;
    expect(direct.metadata).toEqual({ m: REDACTED, [REDACTED]: "key" });
  });

  it("keeps them out of a failed run's error and its nested run", async () => {
    await server.upload("secret-raiser", raiser);
    const res = await server.invoke({ model: "workflow:secret-raiser", input: {}, secrets: { api: SECRET }, session_id: "sess-raiser" });
    expect(res.status).toBe(500);
    expect(leaks(JSON.stringify(res.body))).toEqual([]);
    const runs = await sessionRuns("sess-raiser");
    expect(runs).toHaveLength(2);
    for (const run of runs) expect(leaks(await recordText(run.run_id))).toEqual([]);
    const failed = JSON.parse(await recordText(res.body.run_id ?? runs.find((r) => r.workflow_ref_name === "secret-raiser").run_id)).data;
    expect(failed.error.message).toBe(`failed with ${REDACTED} at https://${REDACTED}@host/`);
  });
});
