// The Datastore's tables in PostgreSQL: the same tables, columns, keys and indexes as schema.ts, in
// the PostgreSQL schema `datastore`. Migrations: migrations-pg/ (`npm run db:generate`).
//
// Types, chosen so a row reads as the same TypeScript object as from SQLite (services/shared/
// schema-parity.ts fails `tsc` otherwise):
// - ids are identity columns (by default, so a given id is taken as SQLite takes it); records' rowid
//   and staged_records' seq are `bigint` read as numbers, stores' id an `integer` (as is store_id);
// - created_at (milliseconds) is `bigint` read as a number;
// - metadata stays `text` (the JSON the caller sent, as in SQLite): filters read it as
//   `metadata::jsonb` (see below);
// - records.vector is `real[]` read and written as the Buffer of float32s that SQLite's blob holds
//   (services/shared/pg-columns.ts: each float goes through exactly), and records.vector_bytes is
//   the same vector as `bytea` (its little-endian float32s, as SQLite's blob), written with it, for
//   the exact scan to read. staged_records.vector is only carried, never searched: `bytea`.
//
// What replaces SQLite's per-store virtual tables (created by store.ts at run time):
// - FTS5 (`ds_fts_<id>`): `records.search`, a generated column
//   `to_tsvector('simple', text) STORED` with a GIN index, in the migrations. Keyword search is
//   `WHERE store_id = $1 AND search @@ q ORDER BY ts_rank(search, q) DESC`, with q built from the
//   words of the query joined by `|` (any of them, as SQLite's ftsQuery does). 'simple' lower-cases
//   and neither stems nor drops stop words: FTS5's porter stemmer has no exact PostgreSQL twin, so
//   the README says where the two rankings may differ.
// - sqlite-vec (`ds_vec_<id>`): nothing in the migrations. Vector search without pgvector is an
//   exact scan of the store's rows: the service reads `vector_bytes` through a cursor and computes
//   the cosine itself (the same results as SQLite's exact search). At start the store tries `CREATE EXTENSION IF NOT EXISTS vector`; where it
//   works, the first vector of a store (which fixes its dimension d) creates a partial HNSW index
//   on the cast column, `CREATE INDEX IF NOT EXISTS ds_vec_<id> ON datastore.records USING hnsw
//   ((vector::vector(d)) vector_cosine_ops) WHERE store_id = <id>` (dropped with the store), and
//   searches order by `vector::vector(d) <=> $q` within that store, rescoring exactly as now. An
//   extension-dependent object kept out of the migrations keeps them applicable everywhere.
// - `ds_ann` (the generation a usearch file next to the SQLite file must match): none. There is no
//   local index file with PostgreSQL; pgvector's index is in the database and transactional.
// - metadata filters: `(metadata::jsonb) #> '{a,b}'` with the same comparisons as filter.ts
//   (booleans compared as 1 and 0, as SQLite's json_extract gives them).
import { sql } from "drizzle-orm";
import { bigint, index, integer, pgSchema, text, uniqueIndex } from "drizzle-orm/pg-core";
import { bytea, float4Array, tsvector } from "../shared/pg-columns.js";

/** datastore is the PostgreSQL schema holding the Datastore's tables. */
export const datastore = pgSchema("datastore");

/** stores are the record stores of every account. */
export const stores = datastore.table(
  "stores",
  {
    id: integer("id").primaryKey().generatedByDefaultAsIdentity(),
    accountId: text("account_id").notNull(),
    name: text("name").notNull(),
    embeddingModel: text("embedding_model").notNull().default(""),
    dimension: integer("dimension").notNull().default(0),
    createdAt: bigint("created_at", { mode: "number" }).notNull(),
  },
  (t) => [uniqueIndex("stores_account_id_name_idx").on(t.accountId, t.name)],
);

/** records hold every store's records; `search` is the only column SQLite's table has not (it is FTS5's job there). */
export const records = datastore.table(
  "records",
  {
    rowid: bigint("rowid", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    storeId: integer("store_id")
      .notNull()
      .references(() => stores.id, { onDelete: "cascade" }),
    recordId: text("record_id").notNull(),
    text: text("text").notNull(),
    metadata: text("metadata").notNull(),
    /** vector is the float32 embedding: `real[]` in SQL, the same Buffer as SQLite's blob in TypeScript. */
    vector: float4Array("vector").notNull(),
    /**
     * vectorBytes is the same vector as SQLite's blob holds it (its little-endian float32s), written
     * beside `vector` on every write: the exact scan reads it (a few µs a row) where reading `real[]`
     * costs PostgreSQL about 43 µs a row, one float4send per element.
     */
    vectorBytes: bytea("vector_bytes").notNull(),
    /** search is the text's tsvector, kept by PostgreSQL itself. */
    search: tsvector("search").notNull().generatedAlwaysAs(sql`to_tsvector('simple', "text")`),
  },
  (t) => [uniqueIndex("records_store_id_record_id_idx").on(t.storeId, t.recordId), index("records_search_idx").using("gin", t.search)],
);

/** staged_records hold the parts of a streamed upsert until it ends (see schema.ts). */
export const stagedRecords = datastore.table(
  "staged_records",
  {
    seq: bigint("seq", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    uploadId: text("upload_id").notNull(),
    recordId: text("record_id").notNull(),
    text: text("text").notNull(),
    metadata: text("metadata").notNull(),
    vector: bytea("vector").notNull(),
  },
  (t) => [index("staged_records_upload_id_seq_idx").on(t.uploadId, t.seq)],
);
