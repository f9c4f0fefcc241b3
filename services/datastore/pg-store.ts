// The Datastore on PostgreSQL: every read and write through the pool, in the `datastore` schema.
// What replaces SQLite's per-store virtual tables (see schema.pg.ts):
// - keyword search: `records.search`, a generated tsvector ('simple': lower-cased words, no
//   stemming) with a GIN index, ranked by ts_rank;
// - vector search: an exact cosine scan of the store's float32 vectors (read through a cursor as
//   bytes, the cosine computed here); where pgvector can be created, a partial HNSW index per store
//   proposes candidates that are re-ranked exactly (in SQL);
// - metadata filters: the comparisons of SQLite's json_extract (filter.ts) on `metadata::jsonb`.
import { and, desc, eq, inArray, type SQL, sql } from "drizzle-orm";
import type { Orm, ServiceDatabase } from "../shared/db.js";
import { invalidArgument } from "../shared/errors.js";
import { lock } from "../shared/queue.js";
import type { Condition, Scalar } from "./filter.js";
import { blobOf, type Hit, queryWords, type RecordInput, Refused, type StoreRow, searchCandidates, type UpsertResult } from "./model.js";
import { type Records, recordsOf } from "./record-pack.js";
import type * as schema from "./schema.js";
import type { DatastoreStore, Reads } from "./store.js";

/** chunk is how many records one INSERT writes (6 parameters each: far below PostgreSQL's 65,535). */
const chunk = 1000;

/** analyzeFrom is the fewest records written (by this process, since the last) after which the store ANALYZEs the records table. */
export const analyzeFrom = 10_000;

/** hnswMaxK is the most candidates the HNSW index is asked for (pgvector's largest hnsw.ef_search). */
const hnswMaxK = 1000;

/** hnswMaxDimension is the largest dimension pgvector's HNSW index takes; larger stores are scanned. */
const hnswMaxDimension = 2000;

/** numberOf reads a metadata value as SQLite's json_extract compares it: numbers, and booleans as 1 and 0; else null. */
function numberOf(v: SQL): SQL {
  return sql`(CASE jsonb_typeof(${v}) WHEN 'number' THEN (${v})::numeric WHEN 'boolean' THEN (${v})::boolean::int END)`;
}

/** same is SQLite's `json_extract(…) IS value`: never null (a missing field is JSON null). */
function same(v: SQL, value: Scalar): SQL {
  if (value === null) return sql`(${v} IS NULL OR jsonb_typeof(${v}) = 'null')`;
  if (typeof value === "string") return sql`coalesce(${v} = to_jsonb(${value}::text), false)`;
  return sql`coalesce(${numberOf(v)} = ${Number(value)}::numeric, false)`;
}

const ranges = { gt: ">", gte: ">=", lt: "<", lte: "<=" } as const;

/** vectorText is a vector as PostgreSQL's array (and pgvector's) text form. */
function vectorText(v: Float32Array): string {
  return `{${v.join(",")}}`;
}

/** scanRows is how many rows each FETCH of an exact scan reads (about 3 MB of vectors at 384 dimensions). */
export const scanRows = 2000;

/** Query is a search's vector as float64s, with the sum of its squares (its norm's square). */
interface Query {
  q: Float64Array;
  qq: number;
}

function queryOf(vector: Float32Array): Query {
  const q = Float64Array.from(vector);
  let qq = 0;
  for (let i = 0; i < q.length; i++) qq += q[i] * q[i];
  return { q, qq };
}

/**
 * cosine is the cosine similarity of the query and a record's little-endian float32 bytes, computed
 * as the SQL rerank computes it (float64 sums in order); null for a zero vector or one of another
 * length, which rank last (as sqlite-vec's null distance does).
 */
function cosine({ q, qq }: Query, bytes: Buffer): number | null {
  if (bytes.length !== q.length * 4) return null;
  const v =
    bytes.byteOffset % 4 === 0
      ? new Float32Array(bytes.buffer, bytes.byteOffset, q.length)
      : new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  let dot = 0;
  let vv = 0;
  for (let i = 0; i < q.length; i++) {
    dot += v[i] * q[i];
    vv += v[i] * v[i];
  }
  const norms = Math.sqrt(vv) * Math.sqrt(qq);
  return norms === 0 ? null : dot / norms;
}

/** TopScores keeps the best `limit` scores offered: highest first, nulls last, the lower rowid first among equals. */
class TopScores {
  private readonly kept: { rowid: number; score: number | null }[] = [];
  constructor(private readonly limit: number) {}

  private static before(a: { rowid: number; score: number | null }, b: { rowid: number; score: number | null }): boolean {
    if (a.score === null || b.score === null) return a.score !== null || (b.score === null && a.rowid < b.rowid);
    return a.score > b.score || (a.score === b.score && a.rowid < b.rowid);
  }

  offer(rowid: number, score: number | null): void {
    const entry = { rowid, score };
    const kept = this.kept;
    if (kept.length === this.limit && !TopScores.before(entry, kept[kept.length - 1])) return;
    let lo = 0;
    let hi = kept.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (TopScores.before(kept[mid], entry)) lo = mid + 1;
      else hi = mid;
    }
    kept.splice(lo, 0, entry);
    if (kept.length > this.limit) kept.pop();
  }

  ranked(): { rowid: number; score: number | null }[] {
    return this.kept;
  }
}

/** postgresStore is the Datastore on an open PostgreSQL database, its reads aside. */
export async function postgresStore(db: ServiceDatabase<typeof schema>): Promise<Omit<DatastoreStore, keyof Reads>> {
  const { orm } = db;
  const { stores, records } = db.tables;
  const pool = db.pool!;
  const unusable = await pgvectorProblem();
  const hnsw = unusable === undefined;

  /** pgvectorProblem creates pgvector where it is installed; it says why vector search scans instead. */
  async function pgvectorProblem(): Promise<string | undefined> {
    if ((await db.rows(sql`SELECT 1 FROM pg_available_extensions WHERE name = 'vector'`)).length === 0) return "pgvector is not installed";
    try {
      await db.run(sql`CREATE EXTENSION IF NOT EXISTS vector`);
    } catch (e) {
      // Another process may have created it meanwhile; else this role may not create extensions.
      if ((await db.rows(sql`SELECT 1 FROM pg_extension WHERE extname = 'vector'`)).length === 0)
        return `pgvector: ${(e as Error).message}`;
    }
    return undefined;
  }

  /** indexVectors creates a store's HNSW index (the first vector fixes its dimension), outside any write's transaction. */
  async function indexVectors(storeId: number, dimension: number): Promise<void> {
    if (!hnsw || dimension > hnswMaxDimension) return;
    await db.run(
      sql.raw(
        `CREATE INDEX IF NOT EXISTS ds_vec_${storeId} ON datastore.records USING hnsw ((vector::vector(${dimension})) vector_cosine_ops) WHERE store_id = ${storeId}`,
      ),
    );
  }
  // Stores given vectors before pgvector was there get their index now.
  for (const s of await orm.select().from(stores)) if (s.dimension > 0) await indexVectors(s.id, s.dimension);

  /** filterSql renders conditions on the records' metadata. */
  function filterSql(conditions: Condition[]): SQL | undefined {
    const parts = conditions.map((c) => {
      // parseFilter has refused quotes and backslashes in names: the path is a plain array literal.
      const v = sql`((${records.metadata})::jsonb #> ${`{${c.path.map((p) => `"${p}"`).join(",")}}`}::text[])`;
      switch (c.op) {
        case "eq":
          return same(v, c.value);
        case "ne":
          return sql`NOT ${same(v, c.value)}`;
        case "in":
          return c.values.length
            ? sql`(${sql.join(
                c.values.map((x) => same(v, x)),
                sql` OR `,
              )})`
            : sql`false`;
        default:
          // A text never satisfies a numeric range (SQLite's typeof test).
          return sql`${numberOf(v)} ${sql.raw(ranges[c.op])} ${c.value}::numeric`;
      }
    });
    return and(...parts);
  }

  /** score is the cosine similarity of a record's vector with the query (null for a zero vector, as sqlite-vec's). */
  const score = (query: Float32Array) =>
    sql<number>`(SELECT sum(a::float8 * b) / nullif(sqrt(sum(a::float8 * a)) * sqrt(sum(b::float8 * b)), 0)
      FROM unnest(${records.vector}, ${vectorText(query)}::real[]) AS u(a, b))`.as("score");

  /** scored ranks the store's (filtered) records among `where` exactly; zero vectors (no score) last, as on SQLite. */
  function scored(storeId: number, query: Float32Array, where: SQL | undefined, limit: number): Promise<Hit[]> {
    return orm
      .select({ id: records.recordId, text: records.text, metadata: records.metadata, score: score(query) })
      .from(records)
      .where(and(eq(records.storeId, storeId), where))
      .orderBy(sql`score DESC NULLS LAST`)
      .limit(limit);
  }

  /** hnswCandidates are the rowids of the k nearest records by the store's HNSW index. */
  async function hnswCandidates(store: StoreRow, query: Float32Array, k: number): Promise<number[]> {
    const d = store.dimension;
    const client = await pool.connect();
    try {
      // ef_search bounds how many rows an HNSW scan returns (40 by default): set for this query only.
      await client.query("BEGIN");
      await client.query(`SET LOCAL hnsw.ef_search = ${Math.max(40, k)}`);
      const { rows } = await client.query<{ rowid: string }>(
        `SELECT rowid FROM datastore.records WHERE store_id = ${store.id} ORDER BY vector::vector(${d}) <=> $1::real[]::vector(${d}) LIMIT ${k}`,
        [vectorText(query)],
      );
      await client.query("COMMIT");
      return rows.map((r) => Number(r.rowid));
    } catch (e) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw e;
    } finally {
      client.release();
    }
  }

  /**
   * fixDimension returns the store's dimension, fixing it at the first vector. The update locks the
   * store's row: a concurrent first write waits, then sees the dimension this one fixed.
   */
  async function fixDimension(tx: Orm<typeof schema>, storeId: number, dimension: number): Promise<{ dimension: number; fixed: boolean }> {
    const [now] = await tx
      .update(stores)
      .set({ dimension })
      .where(and(eq(stores.id, storeId), eq(stores.dimension, 0)))
      .returning({ dimension: stores.dimension });
    if (now) return { dimension, fixed: true };
    const [row] = await tx.select({ dimension: stores.dimension }).from(stores).where(eq(stores.id, storeId));
    if (!row) throw new Error(`datastore ${storeId} was dropped during the write`);
    return { dimension: row.dimension, fixed: false };
  }

  /** writeAll upserts records of the store's dimension (checked from `offset` before anything is written). */
  async function writeAll(tx: Orm<typeof schema>, storeId: number, input: RecordInput[], dimension: number, offset: number): Promise<void> {
    for (const [index, r] of input.entries()) {
      if (r.vector.length !== dimension) throw new Refused({ ok: false, index: offset + index, got: r.vector.length, want: dimension });
    }
    for (let i = 0; i < input.length; i += chunk) {
      // One statement may not update a row twice: of records sharing an id, the last wins (as on SQLite).
      const part = [...new Map(input.slice(i, i + chunk).map((r) => [r.id, r])).values()];
      await tx
        .insert(records)
        .values(
          part.map((r) => {
            const vector = blobOf(r.vector);
            // vectorBytes is a column of PostgreSQL's table only (schema.pg.ts); the tables are typed as SQLite's.
            return {
              storeId,
              recordId: r.id,
              text: r.text,
              metadata: r.metadata,
              vector,
              vectorBytes: vector,
            } as typeof records.$inferInsert;
          }),
        )
        .onConflictDoUpdate({
          target: [records.storeId, records.recordId],
          set: {
            text: sql`excluded.text`,
            metadata: sql`excluded.metadata`,
            // and vector_bytes with it: a column of PostgreSQL's table only, which the SQLite-typed table cannot name
            vector: sql`excluded.vector, "vector_bytes" = excluded.vector_bytes`,
          },
        })
        .catch((e: unknown) => {
          // program_limit_exceeded: a text whose tsvector passes 1 MiB (drizzle wraps the driver's error).
          if ((e as { cause?: { code?: unknown } }).cause?.code !== "54000") throw e;
          const [from, to] = [offset + i, offset + i + part.length - 1];
          throw invalidArgument(
            `records[${from}..${to}]: a text holds more words than PostgreSQL's text search indexes (its tsvector passes 1 MiB)`,
            "records",
          );
        });
    }
  }

  /** writing runs a write in a transaction, returns a refusal as its result, and indexes a dimension it fixed once committed. */
  async function writing<T>(
    storeId: number,
    fn: (tx: Orm<typeof schema>, fixed: (dimension: number) => void, wrote: (records: number) => void) => Promise<T>,
  ): Promise<T> {
    let fixed = 0;
    let written = 0;
    const result = await db.transaction((tx) =>
      fn(
        tx,
        (d) => (fixed = d),
        (n) => (written += n),
      ),
    );
    if (fixed) await indexVectors(storeId, fixed);
    await analyzeAfter(written);
    return result;
  }

  // Without fresh statistics the planner takes a search after a bulk load for a scan of the store's
  // id index ANDed with the GIN index: 20 ms where the GIN index alone takes 1 ms at 200,000
  // records. Autovacuum analyzes only after its next nap (a minute) and 10% of the table, so the
  // store does it itself once this process has written analyzeFrom records and a fifth of what the
  // table held at the last ANALYZE, as PostgreSQL's "Populating a Database" advises after a load.
  let unanalyzed = 0;
  let analyzedRows = 0;
  async function analyzeAfter(written: number): Promise<void> {
    unanalyzed += written;
    if (unanalyzed < Math.max(analyzeFrom, analyzedRows / 5)) return;
    unanalyzed = 0;
    try {
      await db.run(sql`ANALYZE datastore.records`);
      const [row] = await db.rows<{ rows: number }>(sql`SELECT reltuples AS rows FROM pg_class WHERE oid = 'datastore.records'::regclass`);
      analyzedRows = Number(row?.rows ?? 0);
    } catch {
      // Statistics only speed searches up: the write has committed, and its caller hears that.
    }
  }

  /** refusal turns a Refused write into its result. */
  function refusal(e: unknown): UpsertResult {
    if (e instanceof Refused) return e.result;
    throw e;
  }

  /**
   * exactSearch scores every (filtered) record of the store: its vectors' bytes come through a cursor,
   * scanRows at a time, in one read-only snapshot, and only the best `limit` rows are read whole.
   */
  async function exactSearch(store: StoreRow, query: Float32Array, conditions: Condition[], limit: number): Promise<Hit[]> {
    const scan = orm
      .select({ rowid: records.rowid, vector: sql<Buffer>`"vector_bytes"` })
      .from(records)
      .where(and(eq(records.storeId, store.id), filterSql(conditions)))
      .toSQL();
    const best = new TopScores(limit);
    const q = queryOf(query);
    const client = await pool.connect();
    try {
      await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
      await client.query(`DECLARE exact_scan NO SCROLL CURSOR FOR ${scan.sql}`, scan.params);
      for (;;) {
        const { rows } = await client.query<[string, Buffer]>({ text: `FETCH ${scanRows} FROM exact_scan`, rowMode: "array" });
        for (const [rowid, bytes] of rows) best.offer(Number(rowid), cosine(q, bytes));
        if (rows.length < scanRows) break;
      }
      const ranked = best.ranked();
      const { rows } = await client.query<{ rowid: string; id: string; text: string; metadata: string }>(
        "SELECT rowid, record_id AS id, text, metadata FROM datastore.records WHERE rowid = ANY($1::bigint[])",
        [ranked.map((r) => r.rowid)],
      );
      await client.query("COMMIT");
      const byRowid = new Map(rows.map((r) => [Number(r.rowid), r]));
      return ranked.map(({ rowid, score }) => {
        const { id, text, metadata } = byRowid.get(rowid)!;
        return { id, text, metadata, score: score as number };
      });
    } catch (e) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw e;
    } finally {
      client.release();
    }
  }

  return {
    dialect: "postgresql",
    vectorEngine: hnsw ? "pgvector HNSW" : `exact scan (${unusable})`,
    async createStore(accountId, name, embeddingModel) {
      const [row] = await orm
        .insert(stores)
        .values({ accountId, name, embeddingModel, createdAt: Date.now() })
        .onConflictDoNothing()
        .returning();
      return row;
    },
    async dropStore(storeId) {
      // The store's records go with it (ON DELETE CASCADE); its HNSW index is dropped before.
      if (hnsw) await db.run(sql.raw(`DROP INDEX IF EXISTS datastore.ds_vec_${storeId}`));
      const gone = await orm.delete(stores).where(eq(stores.id, storeId)).returning({ id: stores.id });
      return gone.length > 0;
    },
    async upsert(storeId, input) {
      if (input.length === 0) return { ok: true, upserted: 0 };
      return writing(storeId, async (tx, fixed, wrote) => {
        const d = await fixDimension(tx, storeId, input[0].vector.length);
        await writeAll(tx, storeId, input, d.dimension, 0);
        wrote(input.length);
        if (d.fixed) fixed(d.dimension);
        return { ok: true, upserted: input.length } as const;
      }).catch(refusal);
    },
    upload(storeId, fn) {
      return writing(storeId, async (tx, fixed, wrote) => {
        let dimension = 0;
        let written = 0;
        // Parts may be handed over before the previous one is written: each waits for the one before.
        const inOrder = lock();
        const part = async (records: Records): Promise<UpsertResult> => {
          const input = recordsOf(records);
          if (input.length === 0) return { ok: true, upserted: written };
          if (!dimension) {
            const d = await fixDimension(tx, storeId, input[0].vector.length);
            dimension = d.dimension;
            if (d.fixed) fixed(dimension);
          }
          try {
            await writeAll(tx, storeId, input, dimension, written);
          } catch (e) {
            return refusal(e);
          }
          written += input.length;
          wrote(input.length);
          return { ok: true, upserted: written };
        };
        return fn((input) => inOrder(() => part(input)));
      });
    },
    async deleteRecords(store, ids) {
      return db.transaction(async (tx) => {
        let deleted = 0;
        for (let i = 0; i < ids.length; i += chunk) {
          const gone = await tx
            .delete(records)
            .where(and(eq(records.storeId, store.id), inArray(records.recordId, ids.slice(i, i + chunk))))
            .returning({ rowid: records.rowid });
          deleted += gone.length;
        }
        return deleted;
      });
    },
    /** keywordSearch ranks by ts_rank (score = ts_rank: how often the words occur, not how rare they are; see the README). */
    async keywordSearch(store, text, conditions, limit) {
      const words = queryWords(text);
      if (words.length === 0) return [];
      // Words are letters and digits only: joined by `|` they are a to_tsquery matching any of them.
      const query = sql`to_tsquery('simple', ${words.join(" | ")})`;
      const rank = sql<number>`ts_rank("search", ${query})`.mapWith(Number);
      return orm
        .select({ id: records.recordId, text: records.text, metadata: records.metadata, score: rank })
        .from(records)
        .where(and(eq(records.storeId, store.id), sql`"search" @@ ${query}`, filterSql(conditions)))
        .orderBy(desc(rank), records.rowid)
        .limit(limit);
    },
    async vectorSearch(store, query, conditions, limit) {
      if (!store.dimension) return [];
      if (!hnsw || store.dimension > hnswMaxDimension) return exactSearch(store, query, conditions, limit);
      const hits = await searchCandidates({
        limit,
        filtered: conditions.length > 0,
        maxK: hnswMaxK,
        propose: (k) => hnswCandidates(store, query, k),
        rerank: async (rowids) =>
          rowids.length ? scored(store.id, query, and(inArray(records.rowid, rowids), filterSql(conditions)), limit) : [],
        exact: () => exactSearch(store, query, conditions, limit),
      });
      return hits ?? exactSearch(store, query, conditions, limit);
    },
    close: () => db.close(),
  };
}
