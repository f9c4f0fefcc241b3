// The server killed with SIGKILL in the middle of runs and uploads: after a restart every
// acknowledged upload is there, runs that were in flight wait for their callers to come back (and
// can be cancelled meanwhile), and every database passes PRAGMA integrity_check. Resuming them is
// test/reliability/durable.test.ts.

import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { type ServerProcess, startServerProcess, stopServerProcess } from "./process.js";

const key = "sk-shaker-crash-test";
const dataDir = mkdtempSync(join(tmpdir(), "shaker-crash-"));

async function api(url: string, method: string, path: string, body?: unknown) {
  const res = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json().catch(() => undefined)) as any };
}

describe("a crash in the middle of work", () => {
  let server: ServerProcess | undefined;
  afterAll(async () => {
    if (server) await stopServerProcess(server, "SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("keeps every acknowledged upload, keeps in-flight runs for their callers, and leaves the databases intact", async () => {
    server = await startServerProcess({ SHAKER_DATA_DIR: dataDir, SHAKER_API_KEY: key });
    const url = server.url;
    expect(
      (
        await api(url, "POST", "/v1/workflows/upload", {
          workflow_ref_name: "sleepy",
          script: "import time\ndef execute(ctx):\n    time.sleep(600)\n    return 1\n",
          timeout_seconds: 3600,
        })
      ).status,
    ).toBe(201);

    // Runs in flight: started (202 would need async mode; use streams and read the first bytes).
    const inflight: string[] = [];
    const controllers: AbortController[] = [];
    for (let i = 0; i < 5; i++) {
      const abort = new AbortController();
      controllers.push(abort);
      const res = await fetch(url + "/v1/chat/completions", {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "workflow:sleepy", input: {}, stream: true }),
        signal: abort.signal,
      });
      inflight.push(res.headers.get("x-request-id")!);
    }

    // Uploads racing with the kill: remember exactly which ones were acknowledged.
    const acknowledged: string[] = [];
    let stop = false;
    const uploader = (async () => {
      for (let i = 0; !stop; i++) {
        const ref = `wf-${i}`;
        try {
          const r = await api(url, "POST", "/v1/workflows/upload", {
            workflow_ref_name: ref,
            script: `def execute(ctx):\n    return ${i}\n`,
          });
          if (r.status === 201) acknowledged.push(ref);
        } catch {
          return; // the server is gone
        }
      }
    })();
    while (acknowledged.length < 10) await new Promise((r) => setTimeout(r, 20));
    await stopServerProcess(server, "SIGKILL");
    stop = true;
    await uploader;
    for (const c of controllers) c.abort();

    // Python children of a SIGKILLed server must not keep the data files busy; the new server recovers.
    server = await startServerProcess({ SHAKER_DATA_DIR: dataDir, SHAKER_API_KEY: key });
    for (const ref of acknowledged) {
      const r = await api(server.url, "GET", `/v1/workflows/${ref}`);
      expect(r.status, `acknowledged upload ${ref} is missing`).toBe(200);
    }
    for (const runId of inflight) {
      // Interrupted: it resumes when its caller retries (its timeout is an hour). Cancel it instead.
      const r = await api(server.url, "GET", `/v1/runs/${runId}`);
      expect(r.status).toBe(200);
      expect(r.body.data.status).toBe("running");
      expect(r.body.data.run_attempt).toBe(1);
      expect((await api(server.url, "POST", `/v1/runs/${runId}/cancel`)).body.data.cancelled).toBe(true);
      expect((await api(server.url, "GET", `/v1/runs/${runId}`)).body.data.status).toBe("cancelled");
    }
    expect((await api(server.url, "GET", "/v1/runs?status=running")).body.data).toEqual([]);
    // And it still works.
    await api(server.url, "POST", "/v1/workflows/upload", {
      workflow_ref_name: "after",
      script: "def execute(ctx):\n    return 'alive'\n",
    });
    const ok = await api(server.url, "POST", "/v1/chat/completions", { model: "workflow:after", input: {} });
    expect(ok.body.output).toBe("alive");
    await stopServerProcess(server, "SIGTERM");
    server = undefined;

    for (const file of readdirSync(dataDir).filter((f) => f.endsWith(".db"))) {
      const db = new Database(join(dataDir, file), { readonly: true });
      expect(db.pragma("integrity_check", { simple: true }), file).toBe("ok");
      db.close();
    }
  });
});
