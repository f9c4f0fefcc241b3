// The Datastore's store: one asynchronous interface, whichever database is under it.
//
// On SQLite (sqlite-engine.ts) every write goes through one writer (writer.ts): on a file a worker
// thread with its own connection, so large uploads and the ANN indexes it keeps never hold up the
// event loop, while a reading connection on the serving thread answers searches. On PostgreSQL
// (pg-store.ts) reads and writes all go through the pool. The reads below are written once for both.
import { and, count, eq, inArray, sql } from "drizzle-orm";
import { isPostgresUrl, openServiceDatabase, type ServiceDatabase } from "../shared/db.js";
import type { Dialect } from "../shared/dialects.js";
import type { Condition } from "./filter.js";
import {
  annFromDefault,
  floatsOf,
  type Hit,
  type RecordInput,
  type RecordRow,
  type StoreRow,
  searchCandidates,
  type UpsertResult,
} from "./model.js";
import { postgresStore } from "./pg-store.js";
import type { Records } from "./record-pack.js";
import * as schema from "./schema.js";
import * as pgSchema from "./schema.pg.js";
import { annMaxK, openSqliteEngine } from "./sqlite-engine.js";
import { inThreadWriter, type Parking, writerThread } from "./writer.js";

export type { Hit, RecordInput, RecordRow, StoreRow, UpsertResult } from "./model.js";

/** UploadPart writes one part of a streamed upload; a refused part writes nothing of the upload. */
export type UploadPart = (input: Records) => Promise<UpsertResult>;

/** DatastoreStore holds every query of the Datastore. */
export interface DatastoreStore {
  dialect: Dialect;
  /** vectorEngine says what answers vector searches (for the start banner). */
  vectorEngine: string;
  store(accountId: string, name: string): Promise<StoreRow | undefined>;
  /** listStores lists an account's stores by name. */
  listStores(accountId: string): Promise<StoreRow[]>;
  /** count is how many records a store holds. */
  count(storeId: number): Promise<number>;
  /** getRecords returns the records found, in the order asked. */
  getRecords(store: StoreRow, ids: string[]): Promise<RecordRow[]>;
  /** createStore creates a store; undefined when the account has one of that name. */
  createStore(accountId: string, name: string, embeddingModel: string): Promise<StoreRow | undefined>;
  /** dropStore removes a store, its records and its indexes; false when it does not exist. */
  dropStore(storeId: number): Promise<boolean>;
  /** upsert writes records in one transaction; a vector of the wrong dimension writes nothing. */
  upsert(storeId: number, input: RecordInput[]): Promise<UpsertResult>;
  /**
   * upload runs a streamed upsert in one transaction: fn writes its parts with `part`; the upload
   * commits when fn returns and writes nothing when it throws. Searches see it once committed.
   */
  upload<T>(storeId: number, fn: (part: UploadPart) => Promise<T>): Promise<T>;
  /** parking is where the reader thread may park packs for this store's uploads (a SQLite file's writer thread); absent elsewhere. */
  parking?(): Promise<Parking | undefined>;
  /** deleteRecords removes records; returns how many existed. */
  deleteRecords(store: StoreRow, ids: string[]): Promise<number>;
  /** keywordSearch finds the records holding any word of the text, best ranked first, the filter applied inside the query. */
  keywordSearch(store: StoreRow, text: string, conditions: Condition[], limit: number): Promise<Hit[]>;
  /** vectorSearch ranks by cosine similarity (score = 1 - cosine distance); a filtered search still returns `limit` hits when they exist. */
  vectorSearch(store: StoreRow, query: Float32Array, conditions: Condition[], limit: number): Promise<Hit[]>;
  close(): Promise<void>;
}

/** Reads are the store's queries written once for both databases. */
export type Reads = Pick<DatastoreStore, "store" | "listStores" | "count" | "getRecords">;

/** Options of createDatastoreStore. */
export interface DatastoreStoreOptions {
  /** poolSize bounds the PostgreSQL connections. */
  poolSize?: number;
  /**
   * annFrom is the store size from which SQLite's vector search uses the ANN index; default
   * SHAKER_DATASTORE_ANN_FROM (tests lower it), else annFromDefault.
   */
  annFrom?: number;
}

/** createDatastoreStore opens the Datastore's tables: a SQLite file (":memory:" for tests) or a postgres:// URL. */
export async function createDatastoreStore(location: string, options: DatastoreStoreOptions = {}): Promise<DatastoreStore> {
  if (isPostgresUrl(location)) {
    const db = await openServiceDatabase({ service: "datastore", location, schema, pgSchema, poolSize: options.poolSize });
    return { ...reads(db), ...(await postgresStore(db)) };
  }
  return sqliteStore(location, options.annFrom ?? Number(process.env.SHAKER_DATASTORE_ANN_FROM ?? annFromDefault));
}

/** chunk is how many ids one query looks up. */
const chunk = 500;

function reads(db: ServiceDatabase<typeof schema>): Reads {
  const { orm } = db;
  const { stores, records } = db.tables;
  // Every search and write looks its store up by name: built once, not by drizzle's builders per
  // call (50 µs of a REST search's CPU against 7 µs for the statement itself).
  const storeByName = orm
    .select()
    .from(stores)
    .where(and(eq(stores.accountId, sql.placeholder("accountId")), eq(stores.name, sql.placeholder("name"))))
    .limit(1)
    .prepare();
  return {
    async store(accountId, name) {
      const [row] = await storeByName.execute({ accountId, name });
      return row;
    },
    async listStores(accountId) {
      const rows = await orm.select().from(stores).where(eq(stores.accountId, accountId));
      // Sorted here: PostgreSQL's collation may order '-' and '_' unlike SQLite's byte order.
      return rows.sort((a, b) => (a.name < b.name ? -1 : 1));
    },
    async count(storeId) {
      const [row] = await orm.select({ n: count() }).from(records).where(eq(records.storeId, storeId));
      return row.n;
    },
    async getRecords(store, ids) {
      const found = new Map<string, RecordRow>();
      for (let i = 0; i < ids.length; i += chunk) {
        const rows = await orm
          .select({ id: records.recordId, text: records.text, metadata: records.metadata, vector: records.vector })
          .from(records)
          .where(and(eq(records.storeId, store.id), inArray(records.recordId, ids.slice(i, i + chunk))));
        for (const row of rows) found.set(row.id, { ...row, vector: floatsOf(row.vector) });
      }
      return ids.flatMap((id) => {
        const r = found.get(id);
        return r ? [r] : [];
      });
    },
  };
}

/**
 * storeRows keeps the stores found by account and name, for a Datastore whose every write goes
 * through this process (SQLite's writer): every search and write looks its store up, and on the
 * event loop of a busy server that statement took 38 to 49 µs of a keyword search's 0.3 ms (exp,
 * counted in the server; 8 µs in a tight loop), a Map lookup none. A write that may change a row
 * (a store created or dropped, the first vector fixing its dimension) forgets them all when it ends,
 * before its caller hears of it; a lookup that began before is not kept. Not on PostgreSQL, where
 * other processes write.
 */
export function storeRows(look: (accountId: string, name: string) => Promise<StoreRow | undefined>) {
  const rows = new Map<string, StoreRow>();
  let writes = 0;
  return {
    async store(accountId: string, name: string): Promise<StoreRow | undefined> {
      const key = `${accountId}\n${name}`;
      const kept = rows.get(key);
      if (kept) return kept;
      const seen = writes;
      const row = await look(accountId, name);
      if (row && seen === writes) {
        if (rows.size >= storeRowsKept) rows.clear();
        rows.set(key, row);
      }
      return row;
    },
    /** after forgets every row once `write` has settled (succeeded or not), then settles as it did. */
    async after<T>(write: Promise<T>): Promise<T> {
      try {
        return await write;
      } finally {
        writes++;
        rows.clear();
      }
    },
  };
}

/** storeRowsKept bounds the rows storeRows keeps (past it, it starts again). */
const storeRowsKept = 10_000;

/**
 * sqliteStore is the Datastore on a SQLite file: writes through the writer, reads on this thread. An
 * in-memory database (tests) cannot be shared between threads: there the writer is the reading
 * engine itself.
 */
async function sqliteStore(file: string, annFrom: number): Promise<DatastoreStore> {
  const memory = file === ":memory:";
  // On a file this engine only reads: the writer thread writes (and keeps the ANN indexes).
  const reader = await openSqliteEngine(file, { ann: memory, annFrom });
  const writer = memory ? Promise.resolve(inThreadWriter(reader)) : writerThread(file, { annFrom });
  // A writer that failed to start fails the calls that need it, not the process.
  writer.catch(() => undefined);
  const read = reads(reader.db);
  const rows = storeRows(read.store);
  return {
    ...read,
    store: rows.store,
    dialect: "sqlite",
    vectorEngine: `sqlite-vec, and a usearch HNSW index per store from ${annFrom} records`,
    createStore: async (accountId, name, model) => rows.after((await writer).createStore(accountId, name, model)),
    dropStore: async (storeId) => rows.after((await writer).dropStore(storeId)),
    upsert: async (storeId, input) => rows.after((await writer).upsert(storeId, input)),
    deleteRecords: async (store, ids) => (await writer).deleteRecords(store, ids),
    parking: async () => (await writer).parking,
    async upload(storeId, fn) {
      const w = await writer;
      return rows.after(
        w.exclusive(async () => {
          await w.beginUpload(storeId);
          try {
            const result = await fn(w.uploadPart);
            await w.commitUpload();
            return result;
          } catch (e) {
            // A refused part has rolled the upload back already; this makes sure.
            await w.rollbackUpload();
            throw e;
          }
        }),
      );
    },
    keywordSearch: async (store, text, conditions, limit) => reader.keywordSearch(store, text, conditions, limit),
    /** The writer's ANN index proposes candidates, re-ranked here; a store without a usable one (small, or being rebuilt) is scanned. */
    async vectorSearch(store, query, conditions, limit) {
      if (!store.dimension) return [];
      const w = await writer;
      const hits = await searchCandidates({
        limit,
        filtered: conditions.length > 0,
        maxK: annMaxK,
        propose: (k) => w.annSearch(store, query, k),
        rerank: async (keys) => reader.rerank(store, keys, query, conditions, limit),
        exact: async () => reader.exactSearch(store, query, conditions, limit),
      });
      return hits ?? reader.scanSearch(store, query, conditions, limit);
    },
    async close() {
      await (await writer.catch(() => undefined))?.close();
      await reader.close();
    },
  };
}
