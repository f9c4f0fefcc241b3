import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openSqliteEngine } from "../services/datastore/sqlite-engine.js";
import { createExecutorStore } from "../services/executor/store.js";
import { checkpointIntervalMs } from "../services/shared/checkpointer.js";

// Service databases are checkpointed from the checkpointer's thread: their WAL is copied into the
// main file while the service's own connection (which would wait for 10,000 pages) never does it.
describe("checkpointer", () => {
  const dir = mkdtempSync(join(tmpdir(), "shaker-ckpt-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // Waits (up to 10 s, for a loaded machine) until the file has grown past `atLeast`: a checkpoint
  // may copy the WAL in more than one pass, so the first growth is not the end of it.
  const settle = async (file: string, atLeast: number) => {
    for (let i = 0; i < 200 && statSync(file).size <= atLeast; i++) await new Promise((r) => setTimeout(r, checkpointIntervalMs / 4));
    return statSync(file).size;
  };

  it("copies an Executor database's WAL into its file from another thread, and its close removes the WAL", async () => {
    const file = join(dir, "executor.db");
    const store = await createExecutorStore(file);
    const before = statSync(file).size;
    const fin = {
      status: 3,
      output: { ok: true },
      error: null,
      finishedAt: 1,
      durationMs: 1,
      emitted: [],
      logs: [],
      httpCalls: [],
      warnings: [],
      promptTokens: 0,
      completionTokens: 0,
    };
    // About 600 pages of WAL, in separate commits: less than SQLite's own 1,000-page checkpoint.
    for (let i = 0; i < 300; i++) {
      const id = `run_${i}`;
      store.insertRun({
        id,
        accountId: "acc",
        workflowRefName: "wf",
        version: "1.0.0",
        versionId: "v",
        sessionId: `s${i}`,
        status: 2,
        input: { i, pad: "x".repeat(2000) },
        metadata: {},
        createdAt: i,
        startedAt: i,
        parentRunId: "",
        depth: 0,
      });
      await store.run("acc", id);
      store.finishRun(id, fin);
      await store.run("acc", id);
    }
    expect(statSync(`${file}-wal`).size).toBeGreaterThan(1_000_000);
    expect(await settle(file, before + 500_000)).toBeGreaterThan(before + 500_000);
    expect(await store.listRuns({ accountId: "acc", offset: 0, limit: 100 })).toHaveLength(100);
    expect(store.integrityCheck()).toBe("ok");
    await store.close();
    expect(existsSync(`${file}-wal`)).toBe(false);
    // Reopened, everything is there.
    const again = await createExecutorStore(file);
    expect((await again.run("acc", "run_299"))?.status).toBe(3);
    await again.close();
  });

  it("checkpoints a Datastore database too (its vector tables need sqlite-vec, which the thread does not load)", async () => {
    const file = join(dir, "datastore.db");
    const store = await openSqliteEngine(file);
    const before = statSync(file).size;
    const created = store.createStore("acc", "docs", "")!;
    for (let i = 0; i < 100; i++) {
      store.upsert(
        created.id,
        Array.from({ length: 10 }, (_, j) => ({
          id: `r${i}-${j}`,
          text: `record ${i} ${j} ${"words ".repeat(50)}`,
          metadata: "{}",
          vector: new Float32Array([i, j]),
        })),
      );
    }
    expect(await settle(file, before + 200_000)).toBeGreaterThan(before + 200_000);
    expect(store.count(created.id)).toBe(1000);
    expect(store.integrityCheck()).toBe("ok");
    await store.close();
    expect(existsSync(`${file}-wal`)).toBe(false);
  });
});
