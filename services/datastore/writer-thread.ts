// The Datastore's writer thread (see writer.ts): its own connection to the database file, every write,
// and the ANN indexes. Between messages it rebuilds stale indexes a few thousand records at a time
// and saves changed ones a while after their last change.
import { setPriority } from "node:os";
import { workerData } from "node:worker_threads";
import { serveThread } from "../shared/thread.js";
import { openSqliteEngine } from "./sqlite-engine.js";
import { writerNice } from "./writer.js";

const { file, annFrom, saveAfterMs = 5000 } = workerData as { file: string; annFrom?: number; saveAfterMs?: number };

// A large upload's inserts, commits and index updates yield the CPU to the event loop (which serves
// requests and relays runs) when both want it: this thread runs niced. On Linux a thread's nice is
// its own (setpriority of "this process" sets the calling thread's); elsewhere it would renice the
// whole server, so it is left alone there.
if (process.platform === "linux") {
  try {
    setPriority(writerNice);
  } catch {
    // Not allowed to lower it (a sandbox): the thread runs as it is.
  }
}
const store = await openSqliteEngine(file, { annFrom, rebuild: "steps" });
store.openIndexes();

let saveTimer: NodeJS.Timeout | undefined;
function changed(): void {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => store.saveIndexes(), saveAfterMs);
}

let rebuilding = false;
function rebuild(): void {
  if (rebuilding) return;
  const step = () => {
    const [storeId] = store.annPending();
    if (storeId === undefined) {
      rebuilding = false;
      changed();
      return;
    }
    store.rebuildStep(storeId, 2000);
    setImmediate(step);
  };
  rebuilding = true;
  setImmediate(step);
}
rebuild();

const writes = new Set(["upsert", "deleteRecords", "dropStore", "commitUpload", "rollbackUpload"]);
serveThread(
  {
    createStore: (a, n, m) => store.createStore(a, n, m),
    dropStore: (id) => store.dropStore(id),
    upsert: (id, input) => store.upsert(id, input),
    deleteRecords: (s, ids) => store.deleteRecords(s, ids),
    beginUpload: (id) => store.beginUpload(id),
    uploadPart: (input) => store.uploadPart(input),
    commitUpload: () => store.commitUpload(),
    rollbackUpload: () => store.rollbackUpload(),
    annSearch: (s, q, k) => store.annSearch(s, q, k),
    close: () => {
      clearTimeout(saveTimer);
      // Its work is done when it returns: SQLite closes synchronously.
      void store.close();
    },
  },
  (op) => {
    if (writes.has(op)) {
      changed();
      rebuild();
    }
  },
);
