// The Executor's store on the database the tests run on (SQLite, or PostgreSQL under
// SHAKER_TEST_DIALECT=postgresql): run records written in batches off the run's path and read back
// as written, the journal of runs in flight, interrupted runs ended, and text PostgreSQL cannot keep
// refused the same way on both.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { RunStatus } from "../gen/shaker/executor/v1/executor_pb.js";
import { createExecutorStore, type ExecutorStore, type JournalEntry } from "../services/executor/store.js";
import { testDialect, testStoreLocation } from "./databases.js";
import { startTestServer, type TestServer } from "./helpers.js";

const start = (id: string, createdAt: number, extra: Partial<Parameters<ExecutorStore["insertRun"]>[0]> = {}) => ({
  id,
  accountId: "acc",
  workflowRefName: "wf",
  version: "1.0.0",
  versionId: "ver",
  sessionId: "sess",
  status: RunStatus.RUNNING,
  input: { text: "a\u0000b", order: { z: 1, a: 2 } },
  metadata: {},
  createdAt,
  startedAt: createdAt,
  parentRunId: "",
  depth: 0,
  ...extra,
});

const end = {
  status: RunStatus.SUCCEEDED,
  output: { ok: true },
  error: null,
  finishedAt: 2_000_000_000_000,
  durationMs: 12.5,
  emitted: [{ seq: 0, value: "token", time: 1 }],
  logs: [{ level: 1, message: "hello", fields: {}, time: 1, source: "stdout" }],
  httpCalls: [],
  warnings: [],
  promptTokens: 3,
  completionTokens: 4,
};

const entry = (runId: string, seq: number, method = "svc/Method"): JournalEntry => ({
  runId,
  seq,
  method,
  requestHash: "hash",
  journaled: 1,
  messages: Buffer.from([0, 0, 0, 2, 123, 125]),
  error: null,
  createdAt: 1_700_000_000_000 + seq,
});

describe("Executor store", () => {
  let store: ExecutorStore;
  let release: () => Promise<void>;

  beforeAll(async () => {
    const location = await testStoreLocation();
    release = location.release;
    store = await createExecutorStore(location.location);
  });
  afterAll(async () => {
    await store?.close();
    await release?.();
  });

  it("reads a run's start and end as soon as they are queued, with its JSON as written and its timestamps past 2^31", async () => {
    store.insertRun(start("run_a", 1_700_000_000_001));
    const started = await store.run("acc", "run_a");
    expect(started).toMatchObject({ status: RunStatus.RUNNING, attempt: 1, executor: "", finishedAt: null, createdAt: 1_700_000_000_001 });
    expect(JSON.stringify(started?.input)).toBe('{"text":"a\\u0000b","order":{"z":1,"a":2}}');
    store.finishRun("run_a", end);
    expect(await store.run("acc", "run_a")).toMatchObject({ ...end, attempt: 1, attempts: null, unjournaledCalls: 0 });
    expect(await store.run("other", "run_a")).toBeUndefined();
  });

  it("writes a run's start, its journal and its end made in one turn in that order: the end forgets the journal", async () => {
    store.insertRun(start("run_b", 1_700_000_000_002));
    const journaled = store.writeJournal(entry("run_b", 0));
    store.finishRun("run_b", end, true);
    await journaled;
    expect(await store.journalEntry("run_b", 0)).toBeUndefined();
    expect((await store.run("acc", "run_b"))?.status).toBe(RunStatus.SUCCEEDED);
  });

  it("writes the journal entries and the ends of several runs made in one turn together, in the order made", async () => {
    // An account of their own: the listings below count the other runs.
    for (const [i, id] of ["run_h", "run_i", "run_j"].entries())
      store.insertRun(start(id, 1_700_000_000_040 + i, { accountId: "acc_batch" }));
    await store.run("acc_batch", "run_h");
    // One turn: entries of three runs (one call written twice: the later wins), two ends that forget
    // their journals and one that keeps it, then an entry after the ends.
    const written = [
      store.writeJournal(entry("run_h", 0)),
      store.writeJournal(entry("run_i", 0)),
      store.writeJournal(entry("run_i", 1)),
      store.writeJournal(entry("run_j", 0)),
      store.writeJournal({ ...entry("run_j", 0, "svc/Again") }),
    ];
    store.finishRun("run_h", end, true);
    store.finishRun("run_i", { ...end, status: RunStatus.FAILED }, true);
    store.finishRun("run_j", end, false);
    // An end from attempt 1 of a run another executor resumed (attempt 2) leaves it as it is, in the
    // same statement, and the journal of attempt 2 with it.
    store.insertRun(start("run_k", 1_700_000_000_043, { accountId: "acc_batch", attempt: 2 }));
    written.push(store.writeJournal(entry("run_k", 0)));
    store.finishRun("run_k", { ...end, attempt: 1 }, true);
    const after = store.writeJournal(entry("run_j", 1));
    await Promise.all([...written, after]);
    expect(await store.journalEntry("run_h", 0)).toBeUndefined();
    expect(await store.journalEntry("run_i", 0)).toBeUndefined();
    expect(await store.journalEntry("run_i", 1)).toBeUndefined();
    expect((await store.journalEntry("run_j", 0))?.method).toBe("svc/Again");
    expect(await store.journalEntry("run_j", 1)).toEqual(entry("run_j", 1));
    expect((await store.run("acc_batch", "run_h"))?.status).toBe(RunStatus.SUCCEEDED);
    expect((await store.run("acc_batch", "run_i"))?.status).toBe(RunStatus.FAILED);
    expect((await store.run("acc_batch", "run_j"))?.status).toBe(RunStatus.SUCCEEDED);
    expect(await store.run("acc_batch", "run_k")).toMatchObject({ status: RunStatus.RUNNING, attempt: 2, finishedAt: null });
    expect(await store.journalEntry("run_k", 0)).toEqual(entry("run_k", 0));
  });

  it("keeps a journal entry per call, the latest written, and cuts the journal from a sequence number", async () => {
    store.insertRun(start("run_c", 1_700_000_000_003));
    for (const seq of [0, 1, 2]) await store.writeJournal(entry("run_c", seq));
    await store.writeJournal({ ...entry("run_c", 1, "svc/Other"), error: { code: 5, message: "not found" } });
    expect(await store.journalEntry("run_c", 1)).toEqual({ ...entry("run_c", 1, "svc/Other"), error: { code: 5, message: "not found" } });
    expect((await store.journalEntry("run_c", 0))?.messages).toEqual(entry("run_c", 0).messages);
    await store.truncateJournal("run_c", 1);
    expect(await store.journalEntry("run_c", 0)).toBeDefined();
    expect(await store.journalEntry("run_c", 1)).toBeUndefined();
    expect(await store.journalEntry("run_c", 2)).toBeUndefined();
  });

  it("finds runs by key and by request, lists an account's runs the latest first, and resumes and fails those in flight", async () => {
    store.insertRun(start("run_d", 1_700_000_000_010, { idempotencyKey: "user:k", requestHash: "req", sessionId: "s2" }));
    store.insertRun(start("run_e", 1_700_000_000_011, { idempotencyKey: "user:k", requestHash: "req", sessionId: "s2" }));
    expect((await store.runByKey("acc", "user:k", 0))?.id).toBe("run_e");
    expect(await store.runByKey("acc", "user:k", 1_700_000_000_012)).toBeUndefined();
    expect((await store.runByRequest("acc", "req"))?.id).toBe("run_e");
    expect((await store.listRuns({ accountId: "acc", sessionId: "s2", offset: 0, limit: 10 })).map((r) => r.id)).toEqual([
      "run_e",
      "run_d",
    ]);
    expect((await store.listRuns({ accountId: "acc", status: RunStatus.SUCCEEDED, offset: 1, limit: 1 })).map((r) => r.id)).toEqual([
      "run_a",
    ]);

    const attempts = [{ attempt: 1, startedAt: 1, endedAt: 2, interrupted: true }];
    expect(await store.resumeRun("run_d", 1, 2, attempts, 1_700_000_000_020, "exec-2")).toBe(true);
    expect(await store.run("acc", "run_d")).toMatchObject({ attempt: 2, attempts, startedAt: 1_700_000_000_020, executor: "exec-2" });
    // Resuming claims the run by its attempt: a second executor resuming attempt 1 does not.
    expect(await store.resumeRun("run_d", 1, 2, attempts, 1_700_000_000_021, "exec-3")).toBe(false);
    expect((await store.run("acc", "run_d"))?.executor).toBe("exec-2");
    const inFlight = (await store.runsInFlight()).map((r) => r.id);
    expect(inFlight).toEqual(expect.arrayContaining(["run_d", "run_e"]));
    expect(inFlight).not.toContain("run_a");
    // One executor's runs, or those of every executor but the live ones.
    expect((await store.runsInFlight({ executor: "exec-2" })).map((r) => r.id)).toEqual(["run_d"]);
    expect((await store.runsInFlight({ except: ["exec-2"] })).map((r) => r.id)).not.toContain("run_d");
    expect(await store.notMine(["run_d", "run_e"], "exec-2")).toEqual(["run_e"]);

    const error = { type: "ServerRestarted", message: "gone", traceback: "" };
    await store.writeJournal(entry("run_d", 0));
    // Failing an attempt that was resumed since changes nothing.
    await store.failRun("run_d", 1, RunStatus.FAILED, error);
    expect((await store.run("acc", "run_d"))?.status).toBe(RunStatus.RUNNING);
    await store.failRun("run_d", 2, RunStatus.FAILED, error);
    const failed = await store.run("acc", "run_d");
    expect(failed).toMatchObject({ status: RunStatus.FAILED, error });
    expect(failed!.durationMs).toBe(failed!.finishedAt! - failed!.createdAt);
    expect(await store.journalEntry("run_d", 0)).toBeUndefined();
    // A run that ended meanwhile keeps its end.
    await store.failRun("run_a", 1, RunStatus.FAILED, error);
    expect((await store.run("acc", "run_a"))?.status).toBe(RunStatus.SUCCEEDED);
  });

  it("keeps the other writes of a batch when one fails, and says which failed", async () => {
    const stderr = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    try {
      store.insertRun(start("run_f", 1_700_000_000_030));
      store.insertRun(start("run_a", 1_700_000_000_031));
      store.insertRun(start("run_g", 1_700_000_000_032));
      expect((await store.run("acc", "run_f"))?.id).toBe("run_f");
      expect(stderr.mock.calls.map(([text]) => String(text)).join("")).toContain("could not record the start of run run_a");
    } finally {
      stderr.mockRestore();
    }
    expect((await store.run("acc", "run_g"))?.id).toBe("run_g");
    expect((await store.run("acc", "run_a"))?.createdAt).toBe(1_700_000_000_001);
    await expect(store.writeJournal({ ...entry("run_f", 0), method: null as never })).rejects.toThrow();
  });

  it("writes what is pending when it closes", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shaker-exec-store-"));
    const fresh = testDialect === "sqlite" ? { location: join(dir, "executor.db"), release: async () => {} } : await testStoreLocation();
    try {
      const first = await createExecutorStore(fresh.location);
      first.insertRun(start("run_h", 1_700_000_000_040));
      first.finishRun("run_h", end);
      await first.close();
      const again = await createExecutorStore(fresh.location);
      expect((await again.run("acc", "run_h"))?.status).toBe(RunStatus.SUCCEEDED);
      await again.close();
    } finally {
      await fresh.release();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// The queue of async runs is PostgreSQL's: executors share it there, and only there.
describe.skipIf(testDialect !== "postgresql")("Executor queue", () => {
  it("gives each queued run to one claimer, oldest first, and takes back one given back", async () => {
    const location = await testStoreLocation();
    const [a, b] = [await createExecutorStore(location.location), await createExecutorStore(location.location)];
    try {
      for (let i = 0; i < 20; i++) await a.enqueueRun(start(`run_q${String(i).padStart(2, "0")}`, 1_700_000_100_000 + i));
      const [first, second] = await Promise.all([a.claimQueued("exec-a", 12, 1), b.claimQueued("exec-b", 12, 1)]);
      const ids = [...first, ...second].map((r) => r.id).sort();
      expect(ids).toEqual(Array.from({ length: 20 }, (_, i) => `run_q${String(i).padStart(2, "0")}`));
      expect(first.every((r) => r.executor === "exec-a" && r.status === RunStatus.RUNNING)).toBe(true);
      expect(second.every((r) => r.executor === "exec-b")).toBe(true);
      expect(await a.claimQueued("exec-a", 5, 1)).toEqual([]);
      await a.requeue(first[0].id, "exec-a");
      expect((await b.claimQueued("exec-b", 5, 2)).map((r) => r.id)).toEqual([first[0].id]);
    } finally {
      await a.close();
      await b.close();
      await location.release();
    }
  });
});

describe("Executor text PostgreSQL cannot keep", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  it("refuses a NUL in a session id, a run id or a listing's filter with 400 naming the field, on either database", async () => {
    const invoked = await server.invoke({ model: "workflow:any", input: {}, session_id: "a\u0000b" });
    expect(invoked.status).toBe(400);
    expect(invoked.body.error.param).toBe("session_id");
    const got = await server.request("GET", "/v1/runs/run_a%00b");
    expect(got.status).toBe(400);
    expect(got.body.error.param).toBe("run_id");
    const listed = await server.request("GET", "/v1/runs?workflow=a%00b");
    expect(listed.status).toBe(400);
    expect(listed.body.error.param).toBe("workflow");
  });
});
