// Secrets given to a run never reach disk, logs, run records or error texts: after runs that
// print them, log them, raise errors containing them, emit them and send them to model calls,
// no file under the data directory and no line the server wrote contains any of them.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { type ServerProcess, startServerProcess, stopServerProcess } from "./process.js";

const key = "sk-shaker-secrets-test";
const dataDir = mkdtempSync(join(tmpdir(), "shaker-secrets-"));
const secrets = { API_TOKEN: "tok-7f3a9c1e5b2d8e4f", PASSWORD: "hunter2-correct-horse-battery", quoted: 'sec"ret\\with\nescapes' };

const leaky = `
import sys
from shaker import WorkflowContext

def execute(ctx: WorkflowContext):
    token = ctx.secrets["API_TOKEN"]
    print("the token is", token)
    print("password:", ctx.secrets["PASSWORD"], file=sys.stderr)
    ctx.log("logging " + token, level="warning", token=token, nested={"pw": ctx.secrets["PASSWORD"]})
    ctx.logger.error("via logger %s", ctx.secrets["quoted"])
    ctx.emit({"echo": token})
    try:
        ctx.chat.completions.create(messages=[{"role": "user", "content": "my password is " + ctx.secrets["PASSWORD"]}])
    except Exception as e:
        ctx.log("model call failed: " + str(e))
    if ctx.input.get("fail"):
        raise RuntimeError("failed with " + token + " and " + ctx.secrets["quoted"])
    return {"saw": token[:3], "metadata": ctx.metadata}
`;

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

describe("secrets", () => {
  let server: ServerProcess | undefined;
  afterAll(async () => {
    if (server) await stopServerProcess(server, "SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("never reach the data directory, the run records, the error texts or the server's output", async () => {
    server = await startServerProcess({ SHAKER_DATA_DIR: dataDir, SHAKER_API_KEY: key });
    const call = async (path: string, body?: unknown, method = "POST") => {
      const res = await fetch(server!.url + path, {
        method,
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, text: await res.text() };
    };
    expect((await call("/v1/workflows/upload", { workflow_ref_name: "leaky", script: leaky })).status).toBe(201);
    const ok = await call("/v1/chat/completions", { model: "workflow:leaky", input: {}, secrets, metadata: { note: "plain" } });
    expect(ok.status).toBe(200);
    const failed = await call("/v1/chat/completions", { model: "workflow:leaky", input: { fail: true }, secrets });
    expect(failed.status).toBe(500);
    expect(failed.text).toContain("RuntimeError: failed with [REDACTED]");
    const streamed = await call("/v1/chat/completions", { model: "workflow:leaky", input: { fail: true }, secrets, stream: true });
    expect(streamed.text).toContain("[REDACTED]");

    // Everything the REST surface shows about those runs.
    const runs = JSON.parse((await call("/v1/runs?workflow=leaky", undefined, "GET")).text).data;
    expect(runs.length).toBe(3);
    const shown = [failed.text, streamed.text.replace(/"emitted":\{"echo":"[^"]*"\}|\\"echo\\":\\"[^"]*\\"/g, "")];
    for (const run of runs) shown.push((await call(`/v1/runs/${run.run_id}`, undefined, "GET")).text);
    const detail = JSON.parse(shown[2]).data;
    expect(detail.logs.some((l: any) => l.message.includes("the token is [REDACTED]"))).toBe(true);

    await stopServerProcess(server, "SIGTERM");
    const onDisk = filesUnder(dataDir).map((f) => [f, readFileSync(f)] as const);
    expect(onDisk.length).toBeGreaterThan(0);
    for (const value of Object.values(secrets)) {
      for (const text of shown) expect(text.includes(value), `a REST answer shows ${value}`).toBe(false);
      for (const [file, bytes] of onDisk) expect(bytes.includes(Buffer.from(value)), `${file} contains ${value}`).toBe(false);
      // JSON-escaped forms too (a secret with quotes or newlines is stored escaped, if at all).
      for (const [file, bytes] of onDisk)
        expect(bytes.includes(Buffer.from(JSON.stringify(value).slice(1, -1))), `${file} contains ${value} escaped`).toBe(false);
      expect(server.output().includes(value), "the server's output contains a secret").toBe(false);
    }
    server = undefined;
  });
});
