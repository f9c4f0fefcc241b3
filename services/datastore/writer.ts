// The Datastore's writer on SQLite: every write of the store goes through one, one at a time. On a database
// file it is a worker thread with its own connection (writerThread), so that writing a large upload,
// committing it and updating the ANN indexes never hold up the event loop; the service's own
// connection only reads, and sees an upload's records once its transaction commits (WAL readers see
// the last commit). The ANN indexes live in the writer thread too: a vector search asks it for
// candidates and re-ranks them on the reading connection. An in-memory database (tests) cannot be
// shared between threads: there the writer is the reading engine, in its thread. (On PostgreSQL
// there is no writer: the pool's connections write.)

import type { MessagePort } from "node:worker_threads";
import { lock } from "../shared/queue.js";
import { Moved, startThread } from "../shared/thread.js";
import type { RecordInput, StoreRow, UpsertResult } from "./model.js";
import { type Records, recordsOf } from "./record-pack.js";
import type { SqliteEngine } from "./sqlite-engine.js";

/** writerNice is the writer thread's nice value (0 is the event loop's; 19 the lowest priority). */
export const writerNice = 10;

/**
 * Pace sizes slices of work (records written, or added to an index) to take about a given time, from
 * the rate of the slices before: a record's cost varies a hundredfold (a keyword record, a
 * 3,072-dimension vector in a large graph).
 */
export class Pace {
  /** perRecordMs is what a record took in the last slice. */
  private perRecordMs = Number.POSITIVE_INFINITY;
  private last = 0;
  constructor(readonly most = 1000) {}

  /** size is how many records fit in `ms` at the last slice's rate: at least one, at most twice the last slice's. */
  size(ms: number): number {
    if (!Number.isFinite(this.perRecordMs)) return 16;
    return Math.max(1, Math.min(this.most, 2 * Math.max(1, this.last), Math.floor(ms / this.perRecordMs)));
  }

  /** took records that `n` records took `ms` (a slice of none teaches nothing). */
  took(n: number, ms: number): void {
    if (n === 0) return;
    this.last = n;
    this.perRecordMs = Math.max(ms, 1e-3) / Math.max(1, n);
  }
}

/** Writer is the Datastore's single writer; uploads hold it (exclusive) from their first part to their end. */
export interface Writer {
  createStore(accountId: string, name: string, embeddingModel: string): Promise<StoreRow | undefined>;
  dropStore(storeId: number): Promise<boolean>;
  upsert(storeId: number, input: RecordInput[]): Promise<UpsertResult>;
  deleteRecords(store: StoreRow, ids: string[]): Promise<number>;
  /** exclusive runs fn with the writer to itself (the upload calls below are only valid inside it). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  beginUpload(storeId: number): Promise<void>;
  uploadPart(input: Records): Promise<UpsertResult>;
  commitUpload(): Promise<UpsertResult>;
  rollbackUpload(): Promise<void>;
  /** annSearch proposes ANN candidates (rowids), undefined when the store has no usable index. */
  annSearch(store: StoreRow, query: Float32Array, k: number): Promise<BigUint64Array | undefined>;
  /** parking is how the reader thread hands packs straight to a writer thread (absent where the writer is not one). */
  parking?: Parking;
  close(): Promise<void>;
}

/** Parking takes packs from the reader thread (ParkedPack in record-pack.ts). */
export interface Parking {
  /** attach makes `port` (the reader thread's other end) a source of parked packs. */
  attach(port: MessagePort): Promise<void>;
  /** letGo drops parked packs no part will take (their upload ended first). */
  letGo(keys: number[]): Promise<void>;
}

type Ops = Omit<Writer, "exclusive" | "close" | "parking">;

/** inThreadWriter writes on the reading engine (an in-memory database). */
export function inThreadWriter(store: SqliteEngine): Writer {
  const exclusive = lock();
  const ops: Ops = {
    createStore: async (a, n, m) => store.createStore(a, n, m),
    dropStore: async (id) => store.dropStore(id),
    upsert: async (id, input) => store.upsert(id, input),
    deleteRecords: async (s, ids) => store.deleteRecords(s, ids),
    beginUpload: async (id) => store.beginUpload(id),
    uploadPart: async (input) => store.uploadPart(recordsOf(input)),
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

/** Options of the writer thread. */
export interface WriterThreadOptions {
  /** annFrom is the store size from which vector searches use the ANN index. */
  annFrom?: number;
  /** saveAfterMs is how long after its last change an ANN index is saved (default 5 s; always on close). */
  saveAfterMs?: number;
  /** saveDeferMs is how long a save waits, at most, for a second without vector searches (default 60 s). */
  saveDeferMs?: number;
}

/** writerThread starts the writer thread on a database file; it has opened the file when this resolves. */
export async function writerThread(file: string, options: WriterThreadOptions = {}): Promise<Writer> {
  const thread = await startThread("datastore's writer", new URL("./writer-thread.ts", import.meta.url), { file, ...options });
  const { call } = thread;
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
    parking: {
      attach: (port) => call("attachReader", new Moved(port, [port])),
      letGo: (keys) => call("letGo", keys),
    },
    close: () => thread.close(),
  };
}
