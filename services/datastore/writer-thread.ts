// The Datastore's writer thread (see writer.ts): its own connection to the database file, every write,
// and the ANN indexes. Between messages it rebuilds stale indexes a few records at a time and saves
// changed ones a while after their last change.
//
// Every store's vector searches ask this thread for candidates, so it never works long without
// answering them: writes run one after another (chained), and a write of many records runs in
// slices of a few milliseconds, letting the searches that arrived meanwhile in between. Written
// whole, a 1,000-record part of an upload (or two, queued) held every account's vector searches
// for hundreds of milliseconds (exp: 622 ms at p50, against 2 ms idle).
import { setImmediate as turn } from "node:timers/promises";
import { type MessagePort, workerData } from "node:worker_threads";
import { lock } from "../shared/queue.js";
import { niceThisThread, serveThread } from "../shared/thread.js";
import type { RecordInput, StoreRow, UpsertResult } from "./model.js";
import { filled, isParked, type RecordPack, type Records, recordsOf } from "./record-pack.js";
import { openSqliteEngine } from "./sqlite-engine.js";
import { Pace, writerNice } from "./writer.js";

const {
  file,
  annFrom,
  saveAfterMs = 5000,
  saveDeferMs = 60_000,
} = workerData as { file: string; annFrom?: number; saveAfterMs?: number; saveDeferMs?: number };

// A large upload's inserts, commits and index updates yield the CPU to the event loop (which serves
// requests and relays runs) when both want it.
niceThisThread(writerNice);
const store = await openSqliteEngine(file, { annFrom, rebuild: "steps" });
store.openIndexes();

// Saving an index holds every store's vector searches while it writes the file (372 and 831 ms for a
// 1M x 384 index, exp): while searches come, a save waits for a second without any, up to saveDeferMs.
let saveTimer: NodeJS.Timeout | undefined;
let deferredSince: number | undefined;
function changed(): void {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(save, saveAfterMs);
}
function save(): void {
  const now = performance.now();
  if (now - lastSearch < searchesRecentMs) {
    deferredSince ??= now;
    if (now - deferredSince < saveDeferMs) {
      saveTimer = setTimeout(save, searchesRecentMs / 4);
      return;
    }
  }
  deferredSince = undefined;
  store.saveIndexes();
}

/** How many records a slice of writing (or of rebuilding an index) takes, learnt from the last ones. */
const writing = new Pace();
const rebuilding = new Pace();

/**
 * A slice's length: short while vector searches come (the last within searchesRecentMs), so that
 * they wait little; long otherwise, since a slice's index update runs on every core and small ones
 * share them poorly (exp, 20,000 x 384 written in slices of 12 records: 14% slower than in slices of
 * 200 or more, 6% in slices of 48).
 */
const sliceMs = { searched: 4, quiet: 50 };
const searchesRecentMs = 1000;
let lastSearch = Number.NEGATIVE_INFINITY;
const sliceBudget = () => (performance.now() - lastSearch < searchesRecentMs ? sliceMs.searched : sliceMs.quiet);

let rebuildUnderWay = false;
function rebuild(): void {
  if (rebuildUnderWay) return;
  const step = () => {
    const [storeId] = store.annPending();
    if (storeId === undefined) {
      rebuildUnderWay = false;
      changed();
      return;
    }
    const rows = rebuilding.size(sliceBudget());
    const t = performance.now();
    store.rebuildStep(storeId, rows);
    rebuilding.took(rows, performance.now() - t);
    setImmediate(step);
  };
  rebuildUnderWay = true;
  setImmediate(step);
}
rebuild();

/**
 * sliced calls `step` with slice sizes (from `pace`, to the slice budget), a turn of the event loop
 * between calls, while it says there is more; it says how many it did, for the pace to learn.
 */
async function sliced(pace: Pace, step: (n: number) => { did: number; more: boolean }): Promise<void> {
  for (;;) {
    const t = performance.now();
    const { did, more } = step(pace.size(sliceBudget()));
    pace.took(did, performance.now() - t);
    if (!more) return;
    await turn();
  }
}

/** slicesOf runs fn over items a slice at a time (see sliced) until it returns false. */
function slicesOf<T>(pace: Pace, items: T[], fn: (slice: T[]) => boolean): Promise<void> {
  let i = 0;
  return sliced(pace, (n) => {
    const slice = items.slice(i, i + n);
    i += slice.length;
    return { did: slice.length, more: fn(slice) && i < items.length };
  });
}

/** inSlices writes an upload's records a slice at a time; the last slice's result. */
async function inSlices(input: RecordInput[]): Promise<UpsertResult> {
  let result: UpsertResult = store.uploadPart([]);
  await slicesOf(writing, input, (slice) => (result = store.uploadPart(slice)).ok);
  return result;
}

/**
 * ownTransaction runs a write of many records in a transaction of its own, as an upload's, written
 * in slices by `fn`; it commits when fn's result is to be kept, and rolls back otherwise or when fn throws.
 */
async function ownTransaction<T>(storeId: number, fn: () => Promise<T>, keep: (result: T) => boolean = () => true): Promise<T> {
  store.beginUpload(storeId);
  try {
    const result = await fn();
    if (keep(result)) store.commitUpload();
    return result;
  } finally {
    store.rollbackUpload();
  }
}

/**
 * deleteRecords removes records all or nothing, in slices (ownTransaction), so that vector searches
 * are answered between slices: in one call, 20,000 ids held every store's searches for 12 s (exp,
 * before the graph's keys were mixed; ann.ts).
 */
const deleting = new Pace();
async function deleteRecords(s: StoreRow, ids: string[]): Promise<number> {
  const unique = [...new Set(ids)];
  return ownTransaction(s.id, async () => {
    let deleted = 0;
    await slicesOf(deleting, unique, (slice) => {
      deleted += store.deletePart(s, slice);
      return true;
    });
    return deleted;
  });
}

/**
 * dropStore removes a store all or nothing, its records in slices (ownTransaction): in one statement,
 * 100,000 records of 384 dimensions held every vector search for 535 ms (exp).
 */
const dropping = new Pace(100_000);
async function dropStore(storeId: number): Promise<boolean> {
  if (!store.storeById(storeId)) return false;
  return ownTransaction(storeId, async () => {
    await sliced(dropping, (n) => {
      const did = store.dropPart(storeId, n);
      return { did, more: did === n };
    });
    return store.dropStore(storeId);
  });
}

/** upsert writes records all or nothing; many of them as an upload of its own, in slices. */
async function upsert(storeId: number, input: RecordInput[]): Promise<UpsertResult> {
  if (input.length <= writing.size(sliceBudget())) return store.upsert(storeId, input);
  return ownTransaction(
    storeId,
    () => inSlices(input),
    (result) => result.ok,
  );
}

// Packs the reader thread parked here (record-pack.ts), by key, until an upload's part takes them or
// the upload lets them go.
const parked = new Map<number, RecordPack>();
const awaited = new Map<number, (pack: RecordPack) => void>();
function arrived({ key, pack }: { key: number; pack: RecordPack }): void {
  const take = awaited.get(key);
  if (!take) parked.set(key, pack);
  else {
    awaited.delete(key);
    take(pack);
  }
}
/** unpark is the pack parked under `key`, once it is here (the reader posts it before it answers the event loop). */
function unpark(key: number): Promise<RecordPack> {
  const pack = parked.get(key);
  if (!pack) return new Promise((resolve) => awaited.set(key, resolve));
  parked.delete(key);
  return Promise.resolve(pack);
}
/** unparked is records as records one by one: a parked pack taken (its embeddings filled in), a pack unpacked. */
async function unparked(records: Records): Promise<RecordInput[]> {
  if (!isParked(records)) return recordsOf(records);
  const pack = await unpark(records.parked);
  return recordsOf(records.fill ? filled(pack, records.fill) : pack);
}

// One write at a time, in the order they came: a write may wait between its slices, and the next
// must not start meanwhile. Vector searches (annSearch) are not chained.
const chained = lock();
const write =
  <A extends unknown[], R>(fn: (...args: A) => R | Promise<R>) =>
  (...args: A): Promise<R> =>
    chained(async () => fn(...args));

const writes = new Set(["upsert", "deleteRecords", "dropStore", "commitUpload", "rollbackUpload"]);
serveThread(
  {
    createStore: write((a: string, n: string, m: string) => store.createStore(a, n, m)),
    dropStore: write(dropStore),
    upsert: write(upsert),
    deleteRecords: write(deleteRecords),
    beginUpload: write((id: number) => store.beginUpload(id)),
    uploadPart: write(async (input: Records) => inSlices(await unparked(input))),
    attachReader: (port: MessagePort) => {
      port.on("message", arrived);
    },
    // Parts read for an upload that ended before writing them: dropped when they arrive.
    letGo: (keys: number[]) => {
      for (const key of keys) void unpark(key);
    },
    commitUpload: write(() => store.commitUpload()),
    rollbackUpload: write(() => store.rollbackUpload()),
    annSearch: (s, q, k) => {
      lastSearch = performance.now();
      return store.annSearch(s, q, k);
    },
    close: write(() => {
      clearTimeout(saveTimer);
      // Its work is done when it returns: SQLite closes synchronously.
      void store.close();
    }),
  },
  (op) => {
    if (writes.has(op)) {
      changed();
      rebuild();
    }
  },
);
