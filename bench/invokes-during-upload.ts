// A trivial invoke every 20 ms and the server's event loop, idle and during large uploads, on a
// `shaker serve` of its own process, as an operator runs it (runs confined as startBenchServer's,
// one worker; its event loop read by loop-probe.mjs, preloaded), each upload sent by a client
// process of its own (sendFile). bench/datastore.ts runs this file as a process of its own and
// reports what it prints (one JSON line): neither the server nor the invokes' timing shares a heap
// with the bench's corpus and bodies (hundreds of MB). In the bench's process the server ran a major
// collection on its event loop about every second of an upload (one `--trace-gc` run; none in a
// process of its own), and the invoking client's own collections were timed as the invokes'.
//
// Arguments: a directory to work in, the NDJSON body's file, how many records it holds. Rounds:
// DS_BENCH_BUSY_ROUNDS (3), each an idle window (250 invokes) then an upload into a store of its
// own; the server is given the records once first, so every timed upload goes into a database that
// holds at least one more.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { startServerProcess, stopServerProcess } from "../test/reliability/process.js";
import { createCaller } from "./client.js";
import { checkpointed, sendFile, sleep } from "./uploads.js";

/** Loop is the server's event-loop delay over a window (ms). */
export interface Loop {
  p99: number;
  max: number;
}

/** Measured is what this process prints: each round's invoke times (ms) and event loop, idle and busy, and the uploads' time. */
export interface Measured {
  idle: number[][];
  busy: number[][];
  idleLoops: Loop[];
  busyLoops: Loop[];
  busyMs: number;
}

const [dir, bodyFile] = process.argv.slice(2);
const rounds = Number(process.env.DS_BENCH_BUSY_ROUNDS ?? 3);
const apiKey = "sk-shaker-bench-upload";
const dataDir = join(dir, "upload-server");
const loopFile = join(dir, "loop.json");
const server = await startServerProcess({
  SHAKER_DATA_DIR: dataDir,
  SHAKER_API_KEY: apiKey,
  SHAKER_WORKERS: "1",
  SHAKER_SANDBOX: process.env.SHAKER_SANDBOX === "none" ? "none" : "auto",
  NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import=${new URL("./loop-probe.mjs", import.meta.url).href}`,
  BENCH_LOOP_FILE: loopFile,
});
const caller = createCaller(server.url, { authorization: `Bearer ${apiKey}`, "content-type": "application/json" });
let asked = 0;
/** loopSince is the server's event-loop delay since the last time it was asked. */
async function loopSince(): Promise<Loop> {
  asked++;
  server.proc.kill("SIGUSR2");
  for (const until = Date.now() + 10_000; Date.now() < until; await sleep(20)) {
    try {
      const said = JSON.parse(readFileSync(loopFile, "utf8"));
      if (said.seq === asked) return said;
    } catch {
      // not written yet, or half written
    }
  }
  throw new Error("the server's event-loop probe did not answer");
}
/** uploadInto creates a store and sends it the body. */
async function uploadInto(store: string): Promise<void> {
  const made = await caller.post("/v1/datastores", JSON.stringify({ name: store }));
  if (made.status !== 201) throw new Error(`store ${store} not created: ${made.status} ${made.body}`);
  const sent = await sendFile(server.url, apiKey, store, bodyFile);
  if (sent.status !== 200) throw new Error(`REST ingest failed: ${sent.status} ${sent.body.slice(0, 300)}`);
}
const invokeBody = JSON.stringify({ model: "workflow:trivial", input: {} });
async function invoke(): Promise<number> {
  const t0 = performance.now();
  const res = await caller.post("/v1/chat/completions", invokeBody);
  if (res.status !== 200) throw new Error(`invoke failed: ${res.status} ${res.body}`);
  return performance.now() - t0;
}

try {
  await uploadInto("first");
  const workflow = await caller.post(
    "/v1/workflows/upload",
    JSON.stringify({ workflow_ref_name: "trivial", script: "def execute(ctx):\n    return 'ok'\n", execution_mode: "sync" }),
  );
  if (workflow.status !== 201) throw new Error(`workflow upload failed: ${workflow.status} ${workflow.body}`);
  for (let i = 0; i < 200; i++) await invoke();
  const measured: Measured = { idle: [], busy: [], idleLoops: [], busyLoops: [], busyMs: 0 };
  // Paced alike idle and busy: back to back, each run's teardown slows the next one.
  for (let r = 0; r < rounds; r++) {
    // Idle means idle: the upload before's WAL copied into the database file first.
    await checkpointed(join(dataDir, "datastore.db"));
    await loopSince();
    const idle: number[] = [];
    for (let i = 0; i < 250; i++) {
      idle.push(await invoke());
      await sleep(20);
    }
    measured.idle.push(idle);
    measured.idleLoops.push(await loopSince());
    const t0 = performance.now();
    let uploading = true;
    const sent = uploadInto(`busy-${r}`).finally(() => {
      uploading = false;
    });
    const busy: number[] = [];
    while (uploading) {
      busy.push(await invoke());
      await sleep(20);
    }
    await sent;
    measured.busyMs += performance.now() - t0;
    measured.busy.push(busy);
    measured.busyLoops.push(await loopSince());
  }
  process.stdout.write(`${JSON.stringify(measured)}\n`);
} finally {
  caller.close();
  await stopServerProcess(server, "SIGTERM");
}
