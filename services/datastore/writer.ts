// The Datastore's writer on SQLite: every write of the store goes through one, one at a time. On a database
// file it is a worker thread with its own connection (writerThread), so that writing a large upload,
// committing it and updating the ANN indexes never hold up the event loop; the service's own
// connection only reads, and sees an upload's records once its transaction commits (WAL readers see
// the last commit). The ANN indexes live in the writer thread too: a vector search asks it for
// candidates and re-ranks them on the reading connection. An in-memory database (tests) cannot be
// shared between threads: there the writer is the reading engine, in its thread. (On PostgreSQL
// there is no writer: the pool's connections write.)

import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import type { RecordInput, StoreRow, UpsertResult } from "./model.js";
import type { SqliteEngine } from "./sqlite-engine.js";

/** Writer is the Datastore's single writer; uploads hold it (exclusive) from their first part to their end. */
export interface Writer {
  createStore(accountId: string, name: string, embeddingModel: string): Promise<StoreRow | undefined>;
  dropStore(storeId: number): Promise<boolean>;
  upsert(storeId: number, input: RecordInput[]): Promise<UpsertResult>;
  deleteRecords(store: StoreRow, ids: string[]): Promise<number>;
  /** exclusive runs fn with the writer to itself (the upload calls below are only valid inside it). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  beginUpload(storeId: number): Promise<void>;
  uploadPart(input: RecordInput[]): Promise<UpsertResult>;
  commitUpload(): Promise<UpsertResult>;
  rollbackUpload(): Promise<void>;
  /** annSearch proposes ANN candidates (rowids), undefined when the store has no usable index. */
  annSearch(store: StoreRow, query: Float32Array, k: number): Promise<BigUint64Array | undefined>;
  close(): Promise<void>;
}

/** lock serialises async sections. */
function lock(): <T>(fn: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>) => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => undefined);
    return run;
  };
}

type Ops = Omit<Writer, "exclusive" | "close">;

/** inThreadWriter writes on the reading engine (an in-memory database). */
export function inThreadWriter(store: SqliteEngine): Writer {
  const exclusive = lock();
  const ops: Ops = {
    createStore: async (a, n, m) => store.createStore(a, n, m),
    dropStore: async (id) => store.dropStore(id),
    upsert: async (id, input) => store.upsert(id, input),
    deleteRecords: async (s, ids) => store.deleteRecords(s, ids),
    beginUpload: async (id) => store.beginUpload(id),
    uploadPart: async (input) => store.uploadPart(input),
    commitUpload: async () => store.commitUpload(),
    rollbackUpload: async () => store.rollbackUpload(),
    annSearch: async (s, q, k) => store.annSearch(s, q, k),
  };
  return {
    ...ops,
    createStore: (a, n, m) => exclusive(() => ops.createStore(a, n, m)),
    dropStore: (id) => exclusive(() => ops.dropStore(id)),
    upsert: (id, input) => exclusive(() => ops.upsert(id, input)),
    deleteRecords: (s, ids) => exclusive(() => ops.deleteRecords(s, ids)),
    exclusive,
    async close() {},
  };
}

const require = createRequire(import.meta.url);

/** The worker's bootstrap: tsx's loader, then writer-thread.ts (Node 20 runs TypeScript through tsx). */
const bootstrap = `
const { workerData } = require("node:worker_threads");
import(workerData.tsx).then((m) => { m.register(); return import(workerData.entry); }).catch((e) => {
  console.error(e);
  process.exit(1);
});
`;

/** Options of the writer thread. */
export interface WriterThreadOptions {
  /** annFrom is the store size from which vector searches use the ANN index. */
  annFrom?: number;
  /** saveAfterMs is how long after its last change an ANN index is saved (default 5 s; always on close). */
  saveAfterMs?: number;
}

/** writerThread starts the writer thread on a database file; it has opened the file when this resolves. */
export async function writerThread(file: string, options: WriterThreadOptions = {}): Promise<Writer> {
  const tsx = pathToFileURL(join(dirname(require.resolve("tsx/package.json")), "dist/esm/api/index.mjs")).href;
  const entry = new URL("./writer-thread.ts", import.meta.url).href;
  const worker = new Worker(bootstrap, { eval: true, workerData: { tsx, entry, file, ...options } });
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let next = 0;
  let failed: Error | undefined;
  const failAll = (e: Error) => {
    failed = e;
    for (const p of pending.values()) p.reject(e);
    pending.clear();
  };
  worker.on("message", (m: { id: number; result?: unknown; error?: string }) => {
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.error !== undefined) p.reject(new Error(m.error));
    else p.resolve(m.result);
  });
  worker.on("error", failAll);
  worker.on("exit", (code) => failAll(new Error(`the datastore's writer thread exited (${code})`)));
  const call = <T>(op: string, ...args: unknown[]): Promise<T> => {
    if (failed) return Promise.reject(failed);
    const id = next++;
    return new Promise<T>((resolve, reject) => {
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      worker.postMessage({ id, op, args });
    });
  };
  await call("ready");
  const exclusive = lock();
  return {
    createStore: (a, n, m) => exclusive(() => call("createStore", a, n, m)),
    dropStore: (id) => exclusive(() => call("dropStore", id)),
    upsert: (id, input) => exclusive(() => call("upsert", id, input)),
    deleteRecords: (s, ids) => exclusive(() => call("deleteRecords", s, ids)),
    exclusive,
    beginUpload: (id) => call("beginUpload", id),
    uploadPart: (input) => call("uploadPart", input),
    commitUpload: () => call("commitUpload"),
    rollbackUpload: () => call("rollbackUpload"),
    annSearch: (s, q, k) => call("annSearch", s, q, k),
    async close() {
      if (failed) return;
      await call("close");
      await worker.terminate();
    },
  };
}
