// Workflow faults, many at once, mixed with good runs: infinite loops, memory bombs, fork bombs,
// segfaults, huge outputs and logs, a script that ignores SIGTERM. Every good run succeeds, every
// bad one fails with a clear error, and process counts and memory return to their baseline.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parentPids, startTestServer, type TestServer } from "../helpers.js";

const bad: Record<string, { script: string; timeout?: number; error: RegExp }> = {
  "infinite-loop": { script: "def execute(ctx):\n    while True:\n        pass\n    return 1\n", timeout: 2, error: /timeout/i },
  "memory-bomb": {
    script: "def execute(ctx):\n    blocks = []\n    while True:\n        blocks.append(bytearray(64 * 1024 * 1024))\n    return 1\n",
    error: /MemoryError|memory/i,
  },
  "fork-bomb": {
    script:
      "import os, time\ndef execute(ctx):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            time.sleep(0.01)\n    return 1\n",
    timeout: 3,
    error: /timeout/i,
  },
  segfault: { script: "import ctypes\ndef execute(ctx):\n    ctypes.string_at(0)\n    return 1\n", error: /signal 11|SIGSEGV/ },
  "huge-output": {
    script: "def execute(ctx):\n    while True:\n        print('x' * 10000)\n    return 1\n",
    timeout: 20,
    error: /output/i,
  },
  "huge-logs": {
    script:
      "def execute(ctx):\n    for i in range(100000):\n        ctx.log('line %d' % i)\n    raise RuntimeError('logged a lot')\n    return 1\n",
    timeout: 30,
    error: /logged a lot/,
  },
  "ignores-sigterm": {
    script: "import signal, time\ndef execute(ctx):\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    time.sleep(60)\n    return 1\n",
    timeout: 2,
    error: /timeout/i,
  },
};

/** descendants counts the processes below the given pids (the workers' spares and runs). */
function descendants(roots: number[]): number {
  const parent = parentPids();
  const set = new Set(roots);
  let count = 0;
  for (const pid of parent.keys()) {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p)) {
      if (set.has(p)) {
        count++;
        break;
      }
    }
  }
  return count;
}

async function settle(check: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return check();
}

describe("workflow faults mixed with good runs", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ workers: 2, runMemoryBytes: 512 * 1024 * 1024, sandbox: "auto" });
    await server.upload("good", "import time\ndef execute(ctx):\n    time.sleep(0.2)\n    return {'n': ctx.input['n']}\n");
    for (const [name, b] of Object.entries(bad)) await server.upload(name, b.script, b.timeout ? { timeout_seconds: b.timeout } : {});
  });
  afterAll(() => server.close());

  it("fails every bad run clearly, succeeds every good one, and returns to the baseline", async () => {
    // Baseline: the workers and their spare children, warmed by a few runs.
    for (let i = 0; i < 3; i++) expect((await server.invoke({ model: "workflow:good", input: { n: i } })).status).toBe(200);
    const workers = server.shaker.workerPids();
    const baseline = descendants(workers);
    const rssBefore = process.memoryUsage().rss;

    const badRuns = Object.keys(bad)
      .flatMap((name) => [name, name])
      .map((name) => server.invoke({ model: `workflow:${name}`, input: {} }).then((r) => ({ name, r })));
    const goodRuns = Array.from({ length: 40 }, (_, n) => server.invoke({ model: "workflow:good", input: { n } }).then((r) => ({ n, r })));
    const [badResults, goodResults] = await Promise.all([Promise.all(badRuns), Promise.all(goodRuns)]);

    for (const { n, r } of goodResults) {
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body.output).toEqual({ n });
    }
    for (const { name, r } of badResults) {
      expect(r.status, `${name}: ${JSON.stringify(r.body)}`).toBeGreaterThanOrEqual(400);
      expect(r.body.error.message, name).toMatch(bad[name].error);
    }
    // The same workers serve on (none died), and nothing a bad run started is left behind.
    expect(server.shaker.workerPids()).toEqual(workers);
    const back = await settle(() => descendants(workers) <= baseline, 15_000);
    expect(back, `processes below the workers: ${descendants(workers)}, baseline ${baseline}`).toBe(true);
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(512 * 1024 * 1024);
    expect((await server.invoke({ model: "workflow:good", input: { n: 99 } })).body.output).toEqual({ n: 99 });
  });
});
