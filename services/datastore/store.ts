import type Database from "better-sqlite3";
import { and, asc, eq } from "drizzle-orm";
import * as sqliteVec from "sqlite-vec";
import { openDatabase } from "../shared/db.js";
import type { Condition, Scalar } from "./filter.js";
import * as schema from "./schema.js";

const migrationsFolder = new URL("./migrations", import.meta.url).pathname;

export type StoreRow = typeof schema.stores.$inferSelect;

/** RecordInput is a record ready to write: its vector already packed as float32. */
export interface RecordInput {
  id: string;
  text: string;
  /** metadata is the JSON text of an object. */
  metadata: string;
  vector: Float32Array;
}

/** RecordRow is a stored record. */
export interface RecordRow {
  id: string;
  text: string;
  metadata: string;
  vector: Float32Array;
}

/** Hit is a search result; score is higher for better hits. */
export interface Hit {
  id: string;
  text: string;
  metadata: string;
  score: number;
}

/** UpsertResult is the outcome of an all-or-nothing write. */
export type UpsertResult = { ok: true; upserted: number } | { ok: false; index: number; got: number; want: number };

class Refused extends Error {
  constructor(readonly result: UpsertResult) {
    super("refused");
  }
}

/** quantized says whether a dimension's KNN runs on binary-quantised vectors (bit[] needs a multiple of 8). */
function quantized(dimension: number): boolean {
  return dimension >= 64 && dimension % 8 === 0;
}

/** oversample is how many binary-KNN candidates are rescored per hit asked for. */
const oversample = 10;

/** exactBelow is the store size under which quantised stores are scanned exactly (a few ms). */
const exactBelow = 10_000;

/** sqlite-vec refuses k above this in its KNN form. */
const maxKnnK = 4096;
const chunk = 500;

function blobOf(v: Float32Array): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

function floatsOf(b: Buffer): Float32Array {
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

function bind(v: Scalar): string | number | null {
  return typeof v === "boolean" ? (v ? 1 : 0) : v;
}

/** filterSql renders conditions on the metadata of `records r`. */
function filterSql(conditions: Condition[]): { sql: string; params: (string | number | null)[] } {
  const parts: string[] = [];
  const params: (string | number | null)[] = [];
  for (const c of conditions) {
    const field = `json_extract(r.metadata, ?)`;
    params.push("$" + c.path.map((p) => `."${p}"`).join(""));
    switch (c.op) {
      case "eq":
        parts.push(`${field} IS ?`);
        params.push(bind(c.value));
        break;
      case "ne":
        parts.push(`${field} IS NOT ?`);
        params.push(bind(c.value));
        break;
      case "in":
        if (c.values.length === 0) {
          parts.push("0");
          params.pop();
        } else {
          parts.push(`${field} IN (${c.values.map(() => "?").join(", ")})`);
          params.push(...c.values.map(bind));
        }
        break;
      default: {
        const op = { gt: ">", gte: ">=", lt: "<", lte: "<=" }[c.op];
        // SQLite orders any text above any number: only numbers may satisfy a numeric range.
        parts.push(`(typeof(${field}) IN ('integer', 'real') AND json_extract(r.metadata, ?) ${op} ?)`);
        params.push(params[params.length - 1], c.value);
      }
    }
  }
  return { sql: parts.length ? parts.join(" AND ") : "1", params };
}

/** ftsQuery turns free text into an FTS5 query matching any of its words (BM25 ranks by how many and how rare). */
export function ftsQuery(text: string): string | undefined {
  const words = text.toLowerCase().match(/[\p{L}\p{N}]+/gu);
  if (!words) return undefined;
  return [...new Set(words)].map((w) => `"${w}"`).join(" OR ");
}

/** DatastoreStore holds every query of the Datastore. */
export type DatastoreStore = ReturnType<typeof createDatastoreStore>;

/** createDatastoreStore opens the Datastore's database (":memory:" for tests) with sqlite-vec loaded. */
export function createDatastoreStore(file: string) {
  const db = openDatabase({ file, migrationsFolder, schema, setup: (sqlite) => sqliteVec.load(sqlite) });
  const { orm, sqlite } = db;
  // 64 MiB of page cache: the (store, id) index of a large store otherwise misses on every insert.
  sqlite.pragma("cache_size = -65536");
  const { stores, stagedRecords } = schema;
  const fts = (id: number) => `ds_fts_${id}`;
  const vec = (id: number) => `ds_vec_${id}`;
  // A crash mid-upload leaves staged parts nobody will commit.
  orm.delete(stagedRecords).run();

  const statements = new Map<string, Database.Statement>();
  function stmt(sql: string): Database.Statement {
    let s = statements.get(sql);
    if (!s) {
      s = sqlite.prepare(sql);
      if (statements.size > 2000) statements.clear();
      statements.set(sql, s);
    }
    return s;
  }

  function createIndexes(storeId: number): void {
    // External content: the text is kept once, in records; the index holds only the terms.
    sqlite.exec(
      `CREATE VIRTUAL TABLE IF NOT EXISTS ${fts(storeId)} USING fts5(text, content = 'records', content_rowid = 'rowid', tokenize = 'porter unicode61 remove_diacritics 2')`,
    );
  }

  function storeById(storeId: number): StoreRow | undefined {
    return orm.select().from(stores).where(eq(stores.id, storeId)).get();
  }

  /** writeOne upserts one record; the caller holds the transaction and has checked the dimension. */
  function writeOne(storeId: number, r: RecordInput): void {
    const existing = stmt("SELECT rowid, text FROM records WHERE store_id = ? AND record_id = ?").get(storeId, r.id) as
      | { rowid: number; text: string }
      | undefined;
    let rowid: bigint;
    const blob = blobOf(r.vector);
    if (existing) {
      rowid = BigInt(existing.rowid);
      stmt(`INSERT INTO ${fts(storeId)} (${fts(storeId)}, rowid, text) VALUES ('delete', ?, ?)`).run(rowid, existing.text);
      stmt("UPDATE records SET text = ?, metadata = ?, vector = ? WHERE rowid = ?").run(r.text, r.metadata, blob, rowid);
      stmt(`DELETE FROM ${vec(storeId)} WHERE rowid = ?`).run(rowid);
    } else {
      rowid = BigInt(
        stmt("INSERT INTO records (store_id, record_id, text, metadata, vector) VALUES (?, ?, ?, ?, ?)").run(
          storeId,
          r.id,
          r.text,
          r.metadata,
          blob,
        ).lastInsertRowid,
      );
    }
    stmt(`INSERT INTO ${fts(storeId)} (rowid, text) VALUES (?, ?)`).run(rowid, r.text);
    stmt(
      quantized(r.vector.length)
        ? `INSERT INTO ${vec(storeId)} (rowid, bits) VALUES (?, vec_quantize_binary(?))`
        : `INSERT INTO ${vec(storeId)} (rowid, embedding) VALUES (?, ?)`,
    ).run(rowid, blob);
  }

  /** fixDimension returns the store's dimension, fixing it (and creating the vector index) at the first vector. */
  function fixDimension(storeId: number, dimension: number): number {
    const store = storeById(storeId);
    if (!store) return 0;
    if (store.dimension > 0) return store.dimension;
    sqlite.exec(
      quantized(dimension)
        ? `CREATE VIRTUAL TABLE ${vec(storeId)} USING vec0(bits bit[${dimension}])`
        : `CREATE VIRTUAL TABLE ${vec(storeId)} USING vec0(embedding float[${dimension}] distance_metric=cosine)`,
    );
    orm.update(stores).set({ dimension }).where(eq(stores.id, storeId)).run();
    return dimension;
  }

  /** rollingBack runs fn in a transaction; a Refused result rolls it back and is returned. */
  function rollingBack(fn: () => UpsertResult): UpsertResult {
    try {
      return sqlite.transaction(fn)();
    } catch (e) {
      if (e instanceof Refused) return e.result;
      throw e;
    }
  }

  function rowsOf(sql: string, params: unknown[]): Hit[] {
    return (stmt(sql).all(...params) as { id: string; text: string; metadata: string; score: number }[]).map((h) => ({ ...h }));
  }

  return {
    close: () => db.close(),
    createStore(accountId: string, name: string, embeddingModel: string): StoreRow | undefined {
      return sqlite.transaction(() => {
        const row = orm
          .insert(stores)
          .values({ accountId, name, embeddingModel, createdAt: Date.now() })
          .onConflictDoNothing()
          .returning()
          .get();
        if (row) createIndexes(row.id);
        return row;
      })();
    },
    store(accountId: string, name: string): StoreRow | undefined {
      return orm
        .select()
        .from(stores)
        .where(and(eq(stores.accountId, accountId), eq(stores.name, name)))
        .get();
    },
    listStores(accountId: string): StoreRow[] {
      return orm.select().from(stores).where(eq(stores.accountId, accountId)).orderBy(asc(stores.name)).all();
    },
    count(storeId: number): number {
      return (stmt("SELECT count(*) AS n FROM records WHERE store_id = ?").get(storeId) as { n: number }).n;
    },
    /** dropStore removes a store, its records and its indexes; false when it does not exist. */
    dropStore(storeId: number): boolean {
      return sqlite.transaction(() => {
        const store = storeById(storeId);
        if (!store) return false;
        sqlite.exec(`DROP TABLE IF EXISTS ${fts(storeId)}`);
        sqlite.exec(`DROP TABLE IF EXISTS ${vec(storeId)}`);
        stmt("DELETE FROM records WHERE store_id = ?").run(storeId);
        orm.delete(stores).where(eq(stores.id, storeId)).run();
        for (const key of statements.keys()) if (key.includes(`_${storeId} `)) statements.delete(key);
        return true;
      })();
    },
    /** upsert writes records in one transaction; a vector of the wrong dimension writes nothing. */
    upsert(storeId: number, input: RecordInput[]): UpsertResult {
      return rollingBack(() => {
        if (input.length === 0) return { ok: true, upserted: 0 };
        const dimension = fixDimension(storeId, input[0].vector.length);
        for (const [index, r] of input.entries()) {
          if (r.vector.length !== dimension) throw new Refused({ ok: false, index, got: r.vector.length, want: dimension });
          writeOne(storeId, r);
        }
        return { ok: true, upserted: input.length };
      });
    },
    /** stage keeps one part of a streamed upload until commitStaged or discardStaged. */
    stage(uploadId: string, input: RecordInput[]): void {
      sqlite.transaction(() => {
        const insert = stmt("INSERT INTO staged_records (upload_id, record_id, text, metadata, vector) VALUES (?, ?, ?, ?, ?)");
        for (const r of input) insert.run(uploadId, r.id, r.text, r.metadata, blobOf(r.vector));
      })();
    },
    /** commitStaged applies a whole staged upload in one transaction, in the order it was sent. */
    commitStaged(uploadId: string, storeId: number): UpsertResult {
      return rollingBack(() => {
        let after = 0;
        let index = 0;
        let dimension = 0;
        for (;;) {
          const rows = stmt(
            "SELECT seq, record_id AS id, text, metadata, vector FROM staged_records WHERE upload_id = ? AND seq > ? ORDER BY seq LIMIT ?",
          ).all(uploadId, after, chunk) as { seq: number; id: string; text: string; metadata: string; vector: Buffer }[];
          if (rows.length === 0) break;
          for (const row of rows) {
            const vector = floatsOf(row.vector);
            dimension ||= fixDimension(storeId, vector.length);
            if (vector.length !== dimension) throw new Refused({ ok: false, index, got: vector.length, want: dimension });
            writeOne(storeId, { id: row.id, text: row.text, metadata: row.metadata, vector });
            index++;
          }
          after = rows[rows.length - 1].seq;
        }
        stmt("DELETE FROM staged_records WHERE upload_id = ?").run(uploadId);
        return { ok: true, upserted: index };
      });
    },
    discardStaged(uploadId: string): void {
      stmt("DELETE FROM staged_records WHERE upload_id = ?").run(uploadId);
    },
    /** getRecords returns the records found, in the order asked. */
    getRecords(store: StoreRow, ids: string[]): RecordRow[] {
      const found = new Map<string, RecordRow>();
      for (let i = 0; i < ids.length; i += chunk) {
        const part = ids.slice(i, i + chunk);
        const rows = sqlite
          .prepare(
            `SELECT record_id AS id, text, metadata, vector FROM records WHERE store_id = ? AND record_id IN (${part.map(() => "?").join(", ")})`,
          )
          .all(store.id, ...part) as { id: string; text: string; metadata: string; vector: Buffer }[];
        for (const row of rows) found.set(row.id, { id: row.id, text: row.text, metadata: row.metadata, vector: floatsOf(row.vector) });
      }
      return ids.flatMap((id) => {
        const r = found.get(id);
        return r ? [r] : [];
      });
    },
    /** deleteRecords removes records from the table and both indexes; returns how many existed. */
    deleteRecords(store: StoreRow, ids: string[]): number {
      return sqlite.transaction(() => {
        let deleted = 0;
        for (const id of new Set(ids)) {
          const row = stmt("SELECT rowid, text FROM records WHERE store_id = ? AND record_id = ?").get(store.id, id) as
            | { rowid: number; text: string }
            | undefined;
          if (!row) continue;
          const rowid = BigInt(row.rowid);
          stmt(`INSERT INTO ${fts(store.id)} (${fts(store.id)}, rowid, text) VALUES ('delete', ?, ?)`).run(rowid, row.text);
          stmt("DELETE FROM records WHERE rowid = ?").run(rowid);
          if (store.dimension) stmt(`DELETE FROM ${vec(store.id)} WHERE rowid = ?`).run(rowid);
          deleted++;
        }
        return deleted;
      })();
    },
    /** keywordSearch ranks by BM25 (score = -bm25), the filter applied inside the query. */
    keywordSearch(storeId: number, text: string, conditions: Condition[], limit: number): Hit[] {
      const match = ftsQuery(text);
      if (!match) return [];
      const f = filterSql(conditions);
      return rowsOf(
        `SELECT r.record_id AS id, r.text, r.metadata, -bm25(${fts(storeId)}) AS score
         FROM ${fts(storeId)} JOIN records r ON r.rowid = ${fts(storeId)}.rowid
         WHERE ${fts(storeId)} MATCH ? AND ${f.sql} ORDER BY bm25(${fts(storeId)}) LIMIT ?`,
        [match, ...f.params, limit],
      );
    },
    /**
     * vectorSearch ranks by cosine similarity (score = 1 - cosine distance) with sqlite-vec's KNN
     * form. For dimensions of 64 and more the KNN runs over binary-quantised vectors (a 32x smaller
     * scan) for `oversample` times more candidates, which are rescored exactly from the float32
     * vectors; stores of at most `exactBelow` records are scanned exactly instead. A filter is applied to the candidates inside the
     * query; when it leaves fewer than `limit`, k grows until the whole store was considered, and
     * past sqlite-vec's largest k an exact scan of the filtered records answers instead, so a
     * filtered search still returns `limit` hits when they exist.
     */
    vectorSearch(store: StoreRow, query: Float32Array, conditions: Condition[], limit: number): Hit[] {
      if (!store.dimension) return [];
      const f = filterSql(conditions);
      const total = this.count(store.id);
      const q = blobOf(query);
      const bits = quantized(store.dimension);
      let k = Math.min(Math.max(bits ? limit * oversample : limit, conditions.length ? limit * 4 : 0, bits ? 100 : 0), total);
      for (;;) {
        if (k > maxKnnK || (bits && total <= exactBelow)) break;
        const hits = bits
          ? rowsOf(
              `WITH knn AS (SELECT rowid FROM ${vec(store.id)} WHERE bits MATCH vec_quantize_binary(?) AND k = ?)
               SELECT r.record_id AS id, r.text, r.metadata, 1 - vec_distance_cosine(r.vector, ?) AS score
               FROM knn JOIN records r ON r.rowid = knn.rowid WHERE ${f.sql} ORDER BY score DESC LIMIT ?`,
              [q, k, q, ...f.params, limit],
            )
          : rowsOf(
              `WITH knn AS (SELECT rowid, distance FROM ${vec(store.id)} WHERE embedding MATCH ? AND k = ?)
               SELECT r.record_id AS id, r.text, r.metadata, 1 - knn.distance AS score
               FROM knn JOIN records r ON r.rowid = knn.rowid WHERE ${f.sql} ORDER BY knn.distance LIMIT ?`,
              [q, k, ...f.params, limit],
            );
        if (hits.length >= limit || k >= total) return hits;
        k = Math.min(k * 4, total);
      }
      return rowsOf(
        `SELECT r.record_id AS id, r.text, r.metadata, 1 - vec_distance_cosine(r.vector, ?) AS score
         FROM records r WHERE r.store_id = ? AND ${f.sql} ORDER BY score DESC LIMIT ?`,
        [q, store.id, ...f.params, limit],
      );
    },
    /** likeScan is the benchmark's baseline: a substring scan of every record's text. */
    likeScan(storeId: number, word: string, limit: number): Hit[] {
      return rowsOf("SELECT record_id AS id, text, metadata, 0 AS score FROM records WHERE store_id = ? AND text LIKE ? LIMIT ?", [
        storeId,
        `%${word}%`,
        limit,
      ]);
    },
    integrityCheck(): string {
      return String(sqlite.pragma("integrity_check", { simple: true }));
    },
  };
}
