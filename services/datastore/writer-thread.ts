// The Datastore's writer thread (see writer.ts): its own connection to the database file, every write,
// and the ANN indexes. Between messages it rebuilds stale indexes a few thousand records at a time
// and saves changed ones a while after their last change.
import { parentPort, workerData } from "node:worker_threads";
import { openSqliteEngine } from "./sqlite-engine.js";

const { file, annFrom, saveAfterMs = 5000 } = workerData as { file: string; annFrom?: number; saveAfterMs?: number };
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

const ops: Record<string, (...args: any[]) => unknown> = {
  ready: () => true,
  createStore: store.createStore,
  dropStore: store.dropStore,
  upsert: store.upsert,
  deleteRecords: store.deleteRecords,
  beginUpload: store.beginUpload,
  uploadPart: store.uploadPart,
  commitUpload: store.commitUpload,
  rollbackUpload: store.rollbackUpload,
  annSearch: store.annSearch,
  close: () => {
    clearTimeout(saveTimer);
    // Its work is done when it returns: SQLite closes synchronously.
    void store.close();
  },
};
const writes = new Set(["upsert", "deleteRecords", "dropStore", "commitUpload", "rollbackUpload"]);

parentPort!.on("message", ({ id, op, args }: { id: number; op: string; args: unknown[] }) => {
  try {
    const result = ops[op].apply(store, args);
    parentPort!.postMessage({ id, result });
    if (writes.has(op)) {
      changed();
      rebuild();
    }
  } catch (e) {
    parentPort!.postMessage({ id, error: (e as Error).message });
  }
});
