import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";

/**
 * The checkpointer copies each service database's WAL into its main file from a thread of its own.
 * SQLite does this in the connection that commits once the WAL passes 1,000 pages: here that is the
 * event loop, which then stalled for about 3 ms (a copy of 4 MB and an fsync) every hundred or so
 * runs, a third of all the time spent writing. The thread checkpoints every `checkpointIntervalMs`
 * with its own connection, PASSIVE (it never waits for or blocks a reader or writer); a service's
 * own connection still checkpoints, as a backstop, past `backstopPages`.
 */
export const checkpointIntervalMs = 200;
export const backstopPages = 10_000;

// The thread's code, CommonJS so that it needs no loader; better-sqlite3 is resolved from here.
const source = `
const { parentPort, workerData } = require("node:worker_threads");
const Database = require(workerData.driver);
const open = new Map();
function checkpoint() {
  for (const db of open.values()) {
    try {
      db.pragma("wal_checkpoint(PASSIVE)");
    } catch {
      // A database being closed or removed: its owner's connection checkpoints at close.
    }
  }
}
parentPort.on("message", (m) => {
  if (m.watch) {
    try {
      const db = new Database(m.watch, { fileMustExist: true });
      db.pragma("busy_timeout = 0");
      open.set(m.watch, db);
    } catch {
      // Not checkpointed from here: the service's connection still does it past the backstop.
    }
  } else if (m.unwatch) {
    const db = open.get(m.unwatch);
    open.delete(m.unwatch);
    try {
      db?.close();
    } catch {}
    Atomics.store(m.done, 0, 1);
    Atomics.notify(m.done, 0);
  }
});
setInterval(checkpoint, workerData.intervalMs);
`;

let worker: Worker | undefined;
let watched = 0;

function thread(): Worker {
  if (!worker) {
    const w = new Worker(source, {
      eval: true,
      workerData: { driver: createRequire(import.meta.url).resolve("better-sqlite3"), intervalMs: checkpointIntervalMs },
    });
    w.unref();
    w.on("error", (e) => process.stderr.write(`checkpointer: ${e.message}\n`));
    w.on("exit", () => {
      if (worker === w) worker = undefined; // not a thread started since
    });
    worker = w;
  }
  return worker;
}

/** watch checkpoints `file` (a database in WAL mode) from the checkpointer's thread until unwatch. */
export function watch(file: string): void {
  watched++;
  thread().postMessage({ watch: file });
}

/**
 * unwatch stops checkpointing `file` and closes the thread's connection to it before it returns (up
 * to a second), so the service's own close is the last one and removes the WAL as SQLite does.
 */
export function unwatch(file: string): void {
  watched--;
  if (!worker) return; // it failed: the service's own connection checkpointed
  const done = new Int32Array(new SharedArrayBuffer(4));
  worker.postMessage({ unwatch: file, done });
  Atomics.wait(done, 0, 0, 1000);
  if (watched <= 0) {
    watched = 0;
    void worker.terminate();
    worker = undefined;
  }
}
