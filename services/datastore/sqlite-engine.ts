// The Datastore on SQLite: a synchronous engine over one connection, with per-store FTS5 and
// sqlite-vec virtual tables and the usearch ANN indexes (ann.ts). The service reaches it through
// store.ts: on a file the engine of its writer thread writes (writer.ts) and a reading engine on the
// serving thread reads. Its queries are SQLite's own (virtual tables, prepared statements kept):
// PostgreSQL's are in pg-store.ts.
import type Database from "better-sqlite3";
import * as sqliteVec from "sqlite-vec";
import { openServiceDatabase } from "../shared/db.js";
import {
  type AnnState,
  addVectors,
  addWritten,
  annMinDimension,
  compactionDue,
  compactStep,
  openAnn,
  removeAnn,
  removeKeys,
  saveAnn,
  searchAnn,
} from "./ann.js";
import type { Condition, Scalar } from "./filter.js";
import { type IndexState, keywordLists, type ListSource, varint } from "./keyword-lists.js";
import {
  annFromDefault,
  annK,
  blobOf,
  floatsOf,
  type Hit,
  hasDirection,
  queryWords,
  type RecordInput,
  Refused,
  type StoreRow,
  type UpsertResult,
} from "./model.js";
import * as schema from "./schema.js";
import * as pgSchema from "./schema.pg.js";

/** quantized says whether a dimension's KNN runs on binary-quantised vectors (bit[] needs a multiple of 8). */
function quantized(dimension: number): boolean {
  return dimension >= 64 && dimension % 8 === 0;
}

/** oversample is how many binary-KNN candidates are rescored per hit asked for. */
const oversample = 10;

/** exactBelow is the store size under which quantised stores are scanned exactly (a few ms). */
const exactBelow = 10_000;

/** mmapBytesDefault is the most of a database file reads map: SQLite's own ceiling (SQLITE_MAX_MMAP_SIZE), about 2 GiB. */
export const mmapBytesDefault = 0x7fff0000;

/** annMaxK is the most ANN candidates a filtered search asks for before it scans the filtered records exactly. */
export const annMaxK = 16_384;

/** Options of openSqliteEngine. */
export interface SqliteEngineOptions {
  /**
   * ann keeps an ANN index per store in this thread (default true). The service's reading
   * connection turns it off: its writer thread keeps the indexes and proposes candidates.
   */
  ann?: boolean;
  /** annFrom is the store size from which vector search uses the ANN index (default annFromDefault). */
  annFrom?: number;
  /** mmapBytes is how much of the file reads map (SQLite's mmap_size; default mmapBytesDefault, 0 for none). */
  mmapBytes?: number;
  /**
   * rebuild says how a stale index is rebuilt: "sync" (the default) all at once when first searched,
   * "steps" only by rebuildStep calls (the writer thread's, between its other work); until then
   * searches scan as if there were no index.
   */
  rebuild?: "sync" | "steps";
  /** keywordListEntries caps the keyword lists kept in memory (keyword-lists.ts), in entries of bytesPerEntry (default 4M: 64 MiB). */
  keywordListEntries?: number;
}

/** sqlite-vec refuses k above this in its KNN form. */
const maxKnnK = 4096;

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
function ftsQuery(text: string): string | undefined {
  const words = queryWords(text);
  return words.length ? words.map((w) => `"${w}"`).join(" OR ") : undefined;
}

/** SqliteEngine holds every SQLite query of the Datastore. */
export type SqliteEngine = Awaited<ReturnType<typeof openSqliteEngine>>;

/** openSqliteEngine opens the Datastore's SQLite file (":memory:" for tests) with sqlite-vec loaded. */
export async function openSqliteEngine(file: string, options: SqliteEngineOptions = {}) {
  const db = await openServiceDatabase({
    service: "datastore",
    location: file,
    schema,
    pgSchema,
    setup: (sqlite) => sqliteVec.load(sqlite),
  });
  const sqlite = db.sqlite!;
  // One transaction function, made once: better-sqlite3's transaction() builds four functions and
  // gives each the others as properties, 5.1 µs a call against 1.2 µs for the call alone (exp).
  const transaction = sqlite.transaction((body: () => unknown) => body());
  const atomically = <T>(body: () => T): T => transaction(body) as T;
  // 64 MiB of page cache: the (store, id) index of a large store otherwise misses on every insert.
  sqlite.pragma("cache_size = -65536");
  // Reads map the file instead of copying each page in with a read() call: a vector search's
  // re-rank reads its 64 candidates' rows, scattered over a table far larger than the page cache
  // (0.38 to 0.46 ms a search against 0.59 to 0.83 ms at 100,000 x 384, through REST; exp). Writes
  // still go through write(), and the mapped pages are the kernel's page cache, not this heap.
  sqlite.pragma(`mmap_size = ${options.mmapBytes ?? mmapBytesDefault}`);
  const fts = (id: number) => `ds_fts_${id}`;
  const vec = (id: number) => `ds_vec_${id}`;
  const annOn = options.ann ?? true;
  const annFrom = options.annFrom ?? annFromDefault;
  const annFile = file === ":memory:" ? undefined : file;
  if (annOn) {
    // A crash mid-upload left staged parts (of an older version) nobody will commit.
    sqlite.exec("DELETE FROM staged_records");
    // Zero vectors written before they were kept out of sqlite-vec's tables (writeOne) leave them, once.
    sqlite.exec("CREATE TABLE IF NOT EXISTS ds_fixes (name TEXT PRIMARY KEY)");
    atomically(() => {
      if (sqlite.prepare("INSERT OR IGNORE INTO ds_fixes (name) VALUES ('zero-vectors-out-of-vec0')").run().changes === 0) return;
      for (const { id } of sqlite.prepare("SELECT id FROM stores WHERE dimension > 0").all() as { id: number }[]) {
        sqlite
          .prepare(
            `DELETE FROM ${vec(id)} WHERE rowid IN (SELECT rowid FROM records WHERE store_id = ? AND vector = zeroblob(length(vector)))`,
          )
          .run(id);
      }
    });
    // ds_ann counts each store's write transactions: the generation an ANN index file must match.
    sqlite.exec("CREATE TABLE IF NOT EXISTS ds_ann (store_id INTEGER PRIMARY KEY, generation INTEGER NOT NULL)");
  }
  // ds_keyword counts each store's updates and deletes: the keyword lists built before one are stale.
  sqlite.exec("CREATE TABLE IF NOT EXISTS ds_keyword (store_id INTEGER PRIMARY KEY, rewrites INTEGER NOT NULL)");
  const anns = new Map<number, AnnState>();
  const lists = keywordLists(options.keywordListEntries ?? 4_000_000);

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

  const storeColumns = "id, account_id AS accountId, name, embedding_model AS embeddingModel, dimension, created_at AS createdAt";
  function storeById(storeId: number): StoreRow | undefined {
    return stmt(`SELECT ${storeColumns} FROM stores WHERE id = ?`).get(storeId) as StoreRow | undefined;
  }

  function generation(storeId: number): number {
    return (stmt("SELECT generation FROM ds_ann WHERE store_id = ?").get(storeId) as { generation: number } | undefined)?.generation ?? 0;
  }

  /** bump counts a write transaction of a store (inside it): a saved index of an older generation is stale. */
  function bump(storeId: number): void {
    if (!annOn) return;
    stmt("INSERT INTO ds_ann (store_id, generation) VALUES (?, 1) ON CONFLICT (store_id) DO UPDATE SET generation = generation + 1").run(
      storeId,
    );
    const state = anns.get(storeId);
    if (state) state.generation = generation(storeId);
  }

  /** countRewrite counts an update or a delete of a store's records (inside its transaction). */
  function countRewrite(storeId: number): void {
    stmt("INSERT INTO ds_keyword (store_id, rewrites) VALUES (?, 1) ON CONFLICT (store_id) DO UPDATE SET rewrites = rewrites + 1").run(
      storeId,
    );
  }

  /** listSource reads what the keyword lists need of a store's FTS5 index (its shadow tables, in FTS5's file format). */
  const listSource: ListSource = {
    state(storeId: number): IndexState {
      const rewrites = (stmt("SELECT rewrites FROM ds_keyword WHERE store_id = ?").get(storeId) as { rewrites: number } | undefined)
        ?.rewrites;
      // The averages record (id 1): the row count, then each column's token count.
      const averages = stmt(`SELECT block FROM ${fts(storeId)}_data WHERE id = 1`).get() as { block: Buffer } | undefined;
      if (!averages) return { rewrites: rewrites ?? 0, rows: 0, tokens: 0, lastRowid: 0 };
      const [rows, at] = varint(averages.block, 0);
      const [tokens] = varint(averages.block, at);
      const last = stmt(`SELECT max(id) AS id FROM ${fts(storeId)}_docsize`).get() as { id: number | null };
      return { rewrites: rewrites ?? 0, rows, tokens, lastRowid: last.id ?? 0 };
    },
    postings(storeId: number, word: string, after: number): [number, number, number][] {
      const rows = stmt(
        `SELECT f.rowid, bm25(${fts(storeId)}), d.sz FROM ${fts(storeId)} f JOIN ${fts(storeId)}_docsize d ON d.id = f.rowid
         WHERE ${fts(storeId)} MATCH ? AND f.rowid > ?`,
      )
        .raw(true)
        .all(`"${word}"`, after) as [number, number, Buffer][];
      return rows.map(([rowid, bm25, size]) => [rowid, bm25, varint(size, 0)[0]]);
    },
  };

  /** annOf is a store's ANN index, loaded from its file or (when stale) empty and to be rebuilt. */
  function annOf(storeId: number, dimension: number): AnnState | undefined {
    if (!annOn || dimension < annMinDimension) return undefined;
    let state = anns.get(storeId);
    if (!state) {
      state = openAnn(annFile, storeId, dimension, generation(storeId));
      // A store without records has nothing to rebuild: its index is complete, and grows with its writes.
      if (!state.built && !stmt("SELECT 1 FROM records WHERE store_id = ? LIMIT 1").get(storeId)) state.built = true;
      anns.set(storeId, state);
    }
    return state;
  }

  /** recordsAfter reads up to `rows` of a store's records (rowid, vector) past rowid `cursor`, in rowid order. */
  function recordsAfter(storeId: number, cursor: number, rows: number): { rowid: number; vector: Float32Array }[] {
    const part = stmt("SELECT rowid, vector FROM records WHERE store_id = ? AND rowid > ? ORDER BY rowid LIMIT ?").all(
      storeId,
      cursor,
      rows,
    ) as { rowid: number; vector: Buffer }[];
    return part.map((r) => ({ rowid: r.rowid, vector: floatsOf(r.vector) }));
  }

  /**
   * rebuildStep adds up to `rows` records past the rebuild's cursor, or of a built index that
   * compactionDue to the graph replacing it; true once the index is built (and compacted).
   */
  function rebuildStep(storeId: number, rows: number): boolean {
    const store = storeById(storeId);
    const state = store && annOf(storeId, store.dimension);
    if (!state) return true;
    if (state.built) {
      if (state.next === undefined && !compactionDue(state)) return true;
      return compactStep(state, recordsAfter(storeId, state.next?.cursor ?? 0, rows), rows);
    }
    const part = recordsAfter(storeId, state.cursor, rows);
    if (part.length) {
      addVectors(
        state,
        part.map((r) => BigInt(r.rowid)),
        part.map((r) => r.vector),
      );
      state.cursor = part[part.length - 1].rowid;
    }
    if (part.length < rows) state.built = true;
    return state.built;
  }

  /** usableAnn is a store's built index when the store is large enough for it, else undefined. */
  function usableAnn(store: StoreRow): AnnState | undefined {
    const state = annOf(store.id, store.dimension);
    if (!state) return undefined;
    if (!state.built && options.rebuild !== "steps") while (!rebuildStep(store.id, 10_000));
    return state.built && state.index.size() >= annFrom ? state : undefined;
  }

  /**
   * Undo is what a write did to a store's ANN index, to reverse when its transaction rolls back: the
   * rowids it inserted leave the graph; those it updated or deleted get their rows' vectors again.
   */
  interface Undo {
    storeId: number;
    inserted: bigint[];
    updated: bigint[];
  }

  function undoAnn(undo: Undo): void {
    const state = anns.get(undo.storeId);
    if (!state) return;
    removeKeys(state, [...undo.inserted, ...undo.updated]);
    const rows = undo.updated.map(
      (rowid) => stmt("SELECT vector FROM records WHERE rowid = ?").get(rowid) as { vector: Buffer } | undefined,
    );
    const keep = undo.updated.filter((_, i) => rows[i]);
    addWritten(
      state,
      keep,
      rows.flatMap((r) => (r ? [floatsOf(r.vector)] : [])),
    );
  }

  /** writeAll writes records of the store's dimension (checked from `offset`), then puts their vectors in the ANN index. */
  function writeAll(storeId: number, input: RecordInput[], dimension: number, offset: number, undo: Undo): void {
    // Asked before the writes: a store without records yet has a complete (empty) index.
    const state = annOf(storeId, dimension);
    const keys: bigint[] = [];
    let rewritten = false;
    for (const [index, r] of input.entries()) {
      if (r.vector.length !== dimension) throw new Refused({ ok: false, index: offset + index, got: r.vector.length, want: dimension });
      const { rowid, updated } = writeOne(storeId, r);
      keys.push(rowid);
      (updated ? undo.updated : undo.inserted).push(rowid);
      rewritten ||= updated;
    }
    if (rewritten) countRewrite(storeId);
    if (state)
      addWritten(
        state,
        keys,
        input.map((r) => r.vector),
      );
  }

  /**
   * deleteIn removes records (the caller holds the transaction) and their vectors from the ANN
   * index; `undo` puts those back should the transaction roll back. Returns how many existed.
   */
  function deleteIn(store: StoreRow, ids: Iterable<string>, undo: Undo): number {
    const gone: bigint[] = [];
    for (const id of ids) {
      const row = stmt("SELECT rowid, text FROM records WHERE store_id = ? AND record_id = ?").get(store.id, id) as
        | { rowid: number; text: string }
        | undefined;
      if (!row) continue;
      const rowid = BigInt(row.rowid);
      stmt(`INSERT INTO ${fts(store.id)} (${fts(store.id)}, rowid, text) VALUES ('delete', ?, ?)`).run(rowid, row.text);
      stmt("DELETE FROM records WHERE rowid = ?").run(rowid);
      if (store.dimension) stmt(`DELETE FROM ${vec(store.id)} WHERE rowid = ?`).run(rowid);
      gone.push(rowid);
    }
    if (gone.length === 0) return 0;
    countRewrite(store.id);
    const state = anns.get(store.id);
    if (state) removeKeys(state, gone);
    for (const rowid of gone) undo.updated.push(rowid);
    return gone.length;
  }

  /** writeOne upserts one record; the caller holds the transaction and has checked the dimension. */
  function writeOne(storeId: number, r: RecordInput): { rowid: bigint; updated: boolean } {
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
    // A vector of zeros stays out of sqlite-vec's table: its cosine distance is NaN, and one NaN
    // among the distances made the float KNN drop true neighbours (a fifth of the top 10 where every
    // fiftieth vector was zero). It has no score anyway: scanSearch's exact fallback ranks it last.
    if (hasDirection(r.vector)) {
      stmt(
        quantized(r.vector.length)
          ? `INSERT INTO ${vec(storeId)} (rowid, bits) VALUES (?, vec_quantize_binary(?))`
          : `INSERT INTO ${vec(storeId)} (rowid, embedding) VALUES (?, ?)`,
      ).run(rowid, blob);
    }
    return { rowid, updated: existing !== undefined };
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
    stmt("UPDATE stores SET dimension = ? WHERE id = ?").run(dimension, storeId);
    return dimension;
  }

  /** changedAny says whether a write changed records: only then is its transaction counted in the store's generation. */
  const changedAny = (undo: Undo) => undo.inserted.length > 0 || undo.updated.length > 0;

  /**
   * inTransaction runs fn in a transaction, counted in the store's generation when it changed
   * records (its `undo` holds them); when fn throws, the ANN index is put back as it was.
   */
  function inTransaction<T>(storeId: number, fn: (undo: Undo) => T): T {
    const undo: Undo = { storeId, inserted: [], updated: [] };
    try {
      return atomically(() => {
        const result = fn(undo);
        if (changedAny(undo)) bump(storeId);
        return result;
      });
    } catch (e) {
      undoAnn(undo);
      throw e;
    }
  }

  /** rollingBack runs fn in a transaction (inTransaction); a Refused result rolls it back and is returned. */
  function rollingBack(storeId: number, fn: (undo: Undo) => UpsertResult): UpsertResult {
    try {
      return inTransaction(storeId, fn);
    } catch (e) {
      if (e instanceof Refused) return e.result;
      throw e;
    }
  }

  /** The streamed upload under way: its records go straight to the tables, in one transaction left open until it ends. */
  let upload: { storeId: number; dimension: number; written: number; undo: Undo } | undefined;

  // The candidates drive the join (CROSS JOIN keeps them the outer loop): each is one rowid lookup.
  // Written as `rowid IN (…) AND store_id = ?`, SQLite walked the store's whole store_id index
  // instead (1.7 ms at 30,000 records, growing with the store).
  const rerankSql = (f: { sql: string }) =>
    `SELECT r.record_id AS id, r.text, r.metadata, 1 - vec_distance_cosine(r.vector, ?) AS score
     FROM json_each(?) AS c CROSS JOIN records r ON r.rowid = c.value
     WHERE r.store_id = ? AND ${f.sql} ORDER BY score DESC LIMIT ?`;

  function rowsOf(sql: string, params: unknown[]): Hit[] {
    return (stmt(sql).all(...params) as { id: string; text: string; metadata: string; score: number }[]).map((h) => ({ ...h }));
  }

  return {
    /** db is the engine's connection, for the queries written once for both databases (store.ts). */
    db,
    /** keywordLists answer unfiltered keyword searches (keyword-lists.ts). */
    keywordLists: lists,
    close(): Promise<void> {
      if (upload) this.rollbackUpload();
      this.saveIndexes();
      return db.close();
    },
    /** saveIndexes writes every changed, built ANN index next to the database file. */
    saveIndexes(): void {
      if (!annFile || upload) return;
      for (const [storeId, state] of anns) saveAnn(annFile, storeId, state);
    },
    rebuildStep,
    /**
     * annPending lists the stores whose ANN index is being rebuilt, or is due a compaction (not
     * while an upload holds the writer: a compaction reads committed records only).
     */
    annPending(): number[] {
      return [...anns].filter(([, s]) => !s.built || (!upload && (s.next !== undefined || compactionDue(s)))).map(([id]) => id);
    },
    /** annStats tells how large a store's ANN graph is, how many removed nodes it keeps, and whether a compaction is under way. */
    annStats(storeId: number): { size: number; removed: number; compacting: boolean } | undefined {
      const s = anns.get(storeId);
      return s && { size: s.index.size(), removed: s.removed, compacting: s.next !== undefined };
    },
    /** openIndexes loads (or starts rebuilding) the ANN index of every store with vectors. */
    openIndexes(): void {
      for (const row of stmt(`SELECT ${storeColumns} FROM stores WHERE dimension > 0`).all() as StoreRow[]) annOf(row.id, row.dimension);
    },
    createStore(accountId: string, name: string, embeddingModel: string): StoreRow | undefined {
      return atomically(() => {
        const row = stmt(
          `INSERT INTO stores (account_id, name, embedding_model, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING ${storeColumns}`,
        ).get(accountId, name, embeddingModel, Date.now()) as StoreRow | undefined;
        if (row) createIndexes(row.id);
        return row;
      });
    },
    storeById,
    count(storeId: number): number {
      return (stmt("SELECT count(*) AS n FROM records WHERE store_id = ?").get(storeId) as { n: number }).n;
    },
    /**
     * dropPart deletes up to `rows` records of a store being dropped, inside the upload under way for
     * it (beginUpload), leaving its indexes to dropStore: a large store is dropped a part at a time,
     * like an upload. Returns how many it deleted.
     */
    dropPart(storeId: number, rows: number): number {
      if (upload?.storeId !== storeId) throw new Error("no upload under way for this store");
      return stmt("DELETE FROM records WHERE rowid IN (SELECT rowid FROM records WHERE store_id = ? LIMIT ?)").run(storeId, rows).changes;
    },
    /** dropStore removes a store, its records and its indexes; false when it does not exist. */
    dropStore(storeId: number): boolean {
      return atomically(() => {
        const store = storeById(storeId);
        if (!store) return false;
        sqlite.exec(`DROP TABLE IF EXISTS ${fts(storeId)}`);
        sqlite.exec(`DROP TABLE IF EXISTS ${vec(storeId)}`);
        stmt("DELETE FROM records WHERE store_id = ?").run(storeId);
        stmt("DELETE FROM stores WHERE id = ?").run(storeId);
        if (annOn) stmt("DELETE FROM ds_ann WHERE store_id = ?").run(storeId);
        stmt("DELETE FROM ds_keyword WHERE store_id = ?").run(storeId);
        anns.delete(storeId);
        removeAnn(annFile, storeId);
        for (const key of statements.keys()) if (key.includes(`_${storeId} `)) statements.delete(key);
        return true;
      });
    },
    /** upsert writes records in one transaction; a vector of the wrong dimension writes nothing. */
    upsert(storeId: number, input: RecordInput[]): UpsertResult {
      if (input.length === 0) return { ok: true, upserted: 0 };
      return rollingBack(storeId, (undo) => {
        writeAll(storeId, input, fixDimension(storeId, input[0].vector.length), 0, undo);
        return { ok: true, upserted: input.length };
      });
    },
    /**
     * beginUpload opens the transaction of a streamed upload: its parts are written straight to the
     * tables and indexes, invisible to other connections until commitUpload (rollbackUpload undoes
     * them). Only this connection's writer may use it meanwhile.
     */
    beginUpload(storeId: number): void {
      if (upload) throw new Error("an upload is already under way");
      sqlite.exec("BEGIN IMMEDIATE");
      upload = { storeId, dimension: 0, written: 0, undo: { storeId, inserted: [], updated: [] } };
    },
    /** uploadPart writes one part of the upload; a refusal rolls the whole upload back. */
    uploadPart(input: RecordInput[]): UpsertResult {
      const u = upload;
      if (!u) throw new Error("no upload under way");
      if (input.length === 0) return { ok: true, upserted: u.written };
      try {
        u.dimension ||= fixDimension(u.storeId, input[0].vector.length);
        writeAll(u.storeId, input, u.dimension, u.written, u.undo);
      } catch (e) {
        this.rollbackUpload();
        if (e instanceof Refused) return e.result;
        throw e;
      }
      u.written += input.length;
      return { ok: true, upserted: u.written };
    },
    commitUpload(): UpsertResult {
      const u = upload;
      if (!u) throw new Error("no upload under way");
      // (A drop records no change: the store has no generation left to count.)
      if (changedAny(u.undo)) bump(u.storeId);
      // Its WAL (the whole upload) is copied into the file by the checkpointer's thread
      // (shared/checkpointer.ts), not on this COMMIT past the backstop: that copy held the writer
      // thread, and every vector search waiting for its candidates, for 220 ms per 60,000 x 384
      // records (exp), seconds at a million.
      const backstop = sqlite.pragma("wal_autocheckpoint", { simple: true }) as number;
      sqlite.pragma("wal_autocheckpoint = 0");
      try {
        sqlite.exec("COMMIT");
      } finally {
        sqlite.pragma(`wal_autocheckpoint = ${backstop}`);
      }
      upload = undefined;
      return { ok: true, upserted: u.written };
    },
    rollbackUpload(): void {
      const u = upload;
      if (!u) return;
      upload = undefined;
      if (sqlite.inTransaction) sqlite.exec("ROLLBACK");
      const state = anns.get(u.storeId);
      if (state) state.generation = generation(u.storeId);
      undoAnn(u.undo);
    },
    /** deleteRecords removes records from the table and both indexes, in one transaction; returns how many existed. */
    deleteRecords(store: StoreRow, ids: string[]): number {
      return inTransaction(store.id, (undo) => deleteIn(store, new Set(ids), undo));
    },
    /**
     * deletePart removes records inside the upload under way (beginUpload) of their store: a delete
     * of many ids is written a part at a time, like an upload, and commits with commitUpload.
     * Returns how many of them existed.
     */
    deletePart(store: StoreRow, ids: Iterable<string>): number {
      const u = upload;
      if (u?.storeId !== store.id) throw new Error("no upload under way for this store");
      try {
        return deleteIn(store, ids, u.undo);
      } catch (e) {
        this.rollbackUpload();
        throw e;
      }
    },
    /** keywordSearch ranks by BM25 (score = -bm25), the filter applied inside the query. */
    keywordSearch(store: StoreRow, text: string, conditions: Condition[], limit: number): Hit[] {
      const storeId = store.id;
      const match = ftsQuery(text);
      if (!match) return [];
      const f = filterSql(conditions);
      if (conditions.length === 0) {
        // Without a filter the keyword lists answer, in one snapshot of the index and records.
        const hits = atomically(() => {
          const top = lists.search(listSource, store.accountId, storeId, queryWords(text), limit);
          if (!top) return undefined;
          const found = new Map(
            (
              stmt(
                "SELECT r.rowid, r.record_id AS id, r.text, r.metadata FROM json_each(?) AS c CROSS JOIN records r ON r.rowid = c.value",
              ).all(`[${top.map((t) => t.rowid).join(",")}]`) as { rowid: number; id: string; text: string; metadata: string }[]
            ).map((r) => [r.rowid, r]),
          );
          return top.flatMap((t) => {
            const r = found.get(t.rowid);
            return r ? [{ id: r.id, text: r.text, metadata: r.metadata, score: t.score }] : [];
          });
        });
        if (hits) return hits;
        // Otherwise (a word past the lists' cap) the top rowids come from the FTS index alone; only they are read from records.
        return rowsOf(
          `WITH top AS (SELECT rowid, rank FROM ${fts(storeId)} WHERE ${fts(storeId)} MATCH ? ORDER BY rank LIMIT ?)
           SELECT r.record_id AS id, r.text, r.metadata, -top.rank AS score FROM top JOIN records r ON r.rowid = top.rowid ORDER BY top.rank`,
          [match, limit],
        );
      }
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
      const ann = usableAnn(store);
      if (ann) {
        for (let k = annK(limit, conditions.length > 0); ; k *= 4) {
          if (k > annMaxK) return this.exactSearch(store, query, conditions, limit);
          const keys = searchAnn(ann, query, k);
          const hits = this.rerank(store, keys, query, conditions, limit);
          if (hits.length >= limit || keys.length < k) return hits;
        }
      }
      return this.scanSearch(store, query, conditions, limit);
    },
    /** annSearch proposes up to k ANN candidates' rowids, or undefined when the store has no usable index (building, or small). */
    annSearch(store: StoreRow, query: Float32Array, k: number): BigUint64Array | undefined {
      const ann = usableAnn(store);
      return ann ? searchAnn(ann, query, k) : undefined;
    },
    /** rerank scores candidates exactly from their float32 vectors; a candidate whose row is not visible here is dropped. */
    rerank(store: StoreRow, keys: BigUint64Array, query: Float32Array, conditions: Condition[], limit: number): Hit[] {
      const f = filterSql(conditions);
      const q = blobOf(query);
      return rowsOf(rerankSql(f), [q, `[${keys.join(",")}]`, store.id, ...f.params, limit]);
    },
    /** exactSearch scores every (filtered) record of a store. */
    exactSearch(store: StoreRow, query: Float32Array, conditions: Condition[], limit: number): Hit[] {
      const f = filterSql(conditions);
      return rowsOf(
        `SELECT r.record_id AS id, r.text, r.metadata, 1 - vec_distance_cosine(r.vector, ?) AS score
         FROM records r WHERE r.store_id = ? AND ${f.sql} ORDER BY score DESC LIMIT ?`,
        [blobOf(query), store.id, ...f.params, limit],
      );
    },
    /** scanSearch is vector search without the ANN index: sqlite-vec KNN or an exact scan (see vectorSearch). */
    scanSearch(store: StoreRow, query: Float32Array, conditions: Condition[], limit: number): Hit[] {
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
        if (hits.length >= limit) return hits;
        // Every vector was a candidate and fewer than `limit` passed: the exact scan adds the records
        // the KNN table leaves out (zero vectors, scored null, last).
        if (k >= total) break;
        k = Math.min(k * 4, total);
      }
      return this.exactSearch(store, query, conditions, limit);
    },
    integrityCheck(): string {
      return String(sqlite.pragma("integrity_check", { simple: true }));
    },
  };
}
