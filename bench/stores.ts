// What the stores cost on PostgreSQL beside SQLite: the same store operations, through the stores
// themselves (no service, no cache), on a SQLite file (the baseline) and on a fresh PostgreSQL
// database of SHAKER_BENCH_DATABASE_URL's server (default: the local one), created for the run and
// dropped after. Without a reachable server the SQLite figures are printed alone, with a note.
// Each case is one operation, timed one at a time or several in flight; add a case to `cases`.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createExecutorStore } from "../services/executor/store.js";
import { createModelProxyStore, encodeCall, type NewCall } from "../services/modelproxy/store.js";
import { createRegistryStore } from "../services/registry/store.js";
import { createDatabase } from "../test/databases.js";
import { fmt, report, summary } from "./stats.js";

/** StoreCase is one store operation, timed on each database. */
interface StoreCase {
  /** name labels the report line. */
  name: string;
  /** ops is how many operations are timed (after a tenth as many to warm up). */
  ops: number;
  /** concurrency is how many operations are in flight at once. */
  concurrency: number;
  /** items is what one operation does (records written, versions resolved), for a time per item. */
  items: { perOp: number; unit: string };
  /** open opens the case's store at location (a SQLite file or a postgres:// URL), fills it, and gives the operation. */
  open(location: string): Promise<{ op: (i: number) => Promise<void>; close(): Promise<void> }>;
}

/** Measured is one case on one database: each operation's latency and the wall time per item. */
interface Measured {
  p50: number;
  perItemUs: number;
}

const iterations = Number(process.env.BENCH_ITERATIONS ?? 2000);

// A workflow as uploads make them: a script of some kilobytes, two accessories.
const script = `def execute(ctx):\n${"    # a line of a workflow of some length\n".repeat(60)}    return {"ok": True}\n`;
const workflowCount = 100;

/** openRegistry fills a Registry store with workflows and resolves one as a chat invoke does: the workflow, its latest published version and its accessories' keys. */
async function openRegistry(location: string) {
  const store = await createRegistryStore(location);
  const account = await store.ensureAccount("bench", false);
  const fields = {
    workflowName: "bench",
    script,
    env: { MODE: "x" },
    timeoutSeconds: 60,
    executionMode: 1,
    datastores: [],
    published: true,
  };
  const accessories = [
    { key: "plan", content: JSON.stringify({ steps: [1, 2, 3] }) },
    { key: "prompts", content: JSON.stringify({ hello: "hi" }) },
  ];
  for (let w = 0; w < workflowCount; w++) {
    for (let v = 0; v < 3; v++) {
      await store.insertVersion(account.id, `wf-${w}`, (l) => (l ? [l.major, l.minor + 1, 0] : [1, 0, 0]), fields, accessories);
    }
  }
  return {
    async op(i: number) {
      const workflow = await store.workflow(account.id, `wf-${i % workflowCount}`);
      const version = await store.latestVersion(workflow!.id, true);
      await store.accessoryKeys(version!.id);
    },
    close: () => store.close(),
  };
}

const recordsPerBatch = 200;
let callSeq = 0;

/** callRecord is a record as the ModelProxy writes one for a short chat call. */
function callRecord(): NewCall {
  return {
    id: `call_${randomBytes(9).toString("base64url")}_${callSeq++}`,
    accountId: "acct_bench",
    sessionId: "sess_bench",
    runId: "run_bench",
    workflowRefName: "bench",
    intent: "answer",
    application: "",
    kind: "chat",
    model: "gpt-4o-mini",
    provider: "openai",
    attempts: 1,
    attemptLog: [{ model: "gpt-4o-mini", provider: "openai", status: 200, error: "", durationMs: 123.4 }],
    status: "ok",
    error: "",
    latencyMs: 123.4,
    ttftMs: 0,
    promptTokens: 24,
    completionTokens: 40,
    request: { model: "gpt-4o-mini", messages: [{ role: "user", content: "a question of some words ".repeat(8) }] },
    response: { id: "chatcmpl-bench", choices: [{ index: 0, message: { role: "assistant", content: "an answer ".repeat(30) } }] },
    createdAt: Date.now(),
  };
}

/** runEnd is what a short run that succeeded ends with, with a log line and an emitted value. */
const runEnd = {
  status: 3,
  output: { ok: true, answer: "an answer ".repeat(10) },
  error: null,
  finishedAt: Date.now(),
  durationMs: 12.5,
  emitted: [{ seq: 0, value: "a token", time: Date.now() }],
  logs: [{ level: 1, message: "a log line", fields: {}, time: Date.now(), source: "stdout" }],
  httpCalls: [],
  warnings: [],
  promptTokens: 24,
  completionTokens: 40,
};

/**
 * openExecutor gives a run's record as the Executor writes it: its start (queued as its process
 * starts), its end a turn later, then a read of it, which waits for both to be written.
 */
async function openExecutor(location: string) {
  const store = await createExecutorStore(location);
  let runs = 0;
  return {
    async op(i: number) {
      const id = `run_bench_${runs++}`;
      const now = Date.now();
      store.insertRun({
        id,
        accountId: "acct_bench",
        workflowRefName: "bench",
        version: "1.0.0",
        versionId: "ver_bench",
        sessionId: `sess_${i}`,
        status: 2,
        input: { question: "a question of some words ".repeat(4) },
        metadata: {},
        createdAt: now,
        startedAt: now,
        parentRunId: "",
        depth: 0,
        requestHash: "hash",
        timeoutMs: 60_000,
        resume: { messages: [], params: {}, hasInput: true },
        executor: "bench",
      });
      await new Promise((r) => setImmediate(r));
      store.finishRun(id, runEnd);
      await store.run("acct_bench", id);
    },
    close: () => store.close(),
  };
}

const cases: StoreCase[] = [
  {
    name: "stores: registry resolve, 1 at a time",
    ops: iterations,
    concurrency: 1,
    items: { perOp: 1, unit: "resolve" },
    open: openRegistry,
  },
  {
    name: "stores: registry resolve, 16 in flight",
    ops: iterations,
    concurrency: 16,
    items: { perOp: 1, unit: "resolve" },
    open: openRegistry,
  },
  {
    name: `stores: call records, batches of ${recordsPerBatch}`,
    ops: Math.max(10, Math.floor(iterations / 40)),
    concurrency: 1,
    items: { perOp: recordsPerBatch, unit: "record" },
    async open(location) {
      const store = await createModelProxyStore(location);
      return {
        op: () => store.insertCalls(Array.from({ length: recordsPerBatch }, () => encodeCall(callRecord()))),
        close: () => store.close(),
      };
    },
  },
  {
    name: "stores: executor run records, 16 in flight",
    ops: iterations,
    concurrency: 16,
    items: { perOp: 1, unit: "run" },
    open: openExecutor,
  },
  {
    name: "stores: executor journal entries, 16 in flight",
    ops: iterations,
    concurrency: 16,
    items: { perOp: 1, unit: "entry" },
    async open(location) {
      const store = await createExecutorStore(location);
      const answer = Buffer.from(JSON.stringify({ completion: { choices: [{ message: { content: "an answer ".repeat(30) } }] } }));
      // A ctx call's answer, durable before it leaves: what each journaled call waits for.
      return {
        op: (i) =>
          store.writeJournal({
            runId: `run_${i % 16}`,
            seq: i,
            method: "shaker.modelproxy.v1.ModelProxyService/ChatCompletion",
            requestHash: "hash",
            journaled: 1,
            messages: answer,
            error: null,
            createdAt: Date.now(),
          }),
        close: () => store.close(),
      };
    },
  },
];

/**
 * measure runs a case's operations on each database, `concurrency` at a time, after a warm-up, in
 * alternating blocks (A B, B A, …) so a drift of this machine's speed hits every database alike.
 */
async function measure(c: StoreCase, locations: string[]): Promise<Measured[]> {
  const sides: { op: (i: number) => Promise<void>; close(): Promise<void>; latencies: number[]; ms: number }[] = [];
  try {
    for (const location of locations) sides.push({ ...(await c.open(location)), latencies: [], ms: 0 });
    const run = async (side: (typeof sides)[number], from: number, to: number, latencies: number[]) => {
      let next = from;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: c.concurrency }, async () => {
          for (let i = next++; i < to; i = next++) {
            const t = performance.now();
            await side.op(i);
            latencies.push(performance.now() - t);
          }
        }),
      );
      return performance.now() - t0;
    };
    // The warm-up takes the numbers after the timed ones: every operation of a side has its own.
    for (const side of sides) await run(side, c.ops, c.ops + Math.ceil(c.ops / 10), []);
    const blocks = 6;
    for (let b = 0; b < blocks; b++) {
      for (const side of b % 2 === 0 ? sides : [...sides].reverse()) {
        side.ms += await run(side, Math.floor((b * c.ops) / blocks), Math.floor(((b + 1) * c.ops) / blocks), side.latencies);
      }
    }
    return sides.map((side) => ({ p50: summary(side.latencies).p50, perItemUs: (side.ms * 1000) / (c.ops * c.items.perOp) }));
  } finally {
    for (const side of sides) await side.close();
  }
}

/** PostgresServer creates and drops the benchmark's databases on a server. */
interface PostgresServer {
  fresh(): Promise<{ url: string; drop(): Promise<void> }>;
}

/** postgresServer checks the server answers; undefined (with a note printed) when it does not. */
async function postgresServer(url: string): Promise<PostgresServer | undefined> {
  try {
    await (await createDatabase(url, "shaker_bench")).drop();
  } catch (e) {
    process.stdout.write(`(PostgreSQL at ${new URL(url).host} unreachable: ${(e as Error).message}; SQLite figures only)\n`);
    return undefined;
  }
  return { fresh: () => createDatabase(url, "shaker_bench") };
}

const figure = (m: Measured, unit: string) => `p50 ${fmt(m.p50)} ms, ${m.perItemUs.toFixed(0)} µs/${unit}`;

export async function benchStores(): Promise<void> {
  const server = await postgresServer(process.env.SHAKER_BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test");
  const dir = mkdtempSync(join(tmpdir(), "shaker-bench-stores-"));
  try {
    for (const [i, c] of cases.entries()) {
      const sqliteFile = join(dir, `case-${i}.db`);
      if (!server) {
        const [sqlite] = await measure(c, [sqliteFile]);
        process.stdout.write(`${c.name.padEnd(44)} ${figure(sqlite, c.items.unit)} (SQLite)\n`);
        continue;
      }
      const database = await server.fresh();
      try {
        const [sqlite, postgres] = await measure(c, [sqliteFile, database.url]);
        report(c.name, figure(postgres, c.items.unit), `${figure(sqlite, c.items.unit)} (SQLite)`, postgres.perItemUs / sqlite.perItemUs);
      } finally {
        await database.drop();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
