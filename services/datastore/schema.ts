import { blob, index, integer, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

/**
 * stores are the record stores of every account. Each store also owns two virtual tables created
 * by the store layer (drizzle-kit cannot generate them): `ds_fts_<id>` (FTS5 over the text) and
 * `ds_vec_<id>` (a sqlite-vec vec0 table whose dimension is fixed by the store's first vector:
 * binary-quantised vectors for KNN candidates when the dimension allows, float32 otherwise).
 */
export const stores = sqliteTable(
  "stores",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    accountId: text("account_id").notNull(),
    name: text("name").notNull(),
    embeddingModel: text("embedding_model").notNull().default(""),
    dimension: integer("dimension").notNull().default(0),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [uniqueIndex("stores_account_id_name_idx").on(t.accountId, t.name)],
);

/** records hold every store's records; their rowid is the rowid of the FTS5 and vec0 rows. */
export const records = sqliteTable(
  "records",
  {
    rowid: integer("rowid").primaryKey(),
    storeId: integer("store_id")
      .notNull()
      .references(() => stores.id, { onDelete: "cascade" }),
    recordId: text("record_id").notNull(),
    text: text("text").notNull(),
    metadata: text("metadata").notNull(),
    /** vector is the float32 embedding, read for exact rescoring and by GetRecords. */
    vector: blob("vector", { mode: "buffer" }).notNull(),
  },
  (t) => [uniqueIndex("records_store_id_record_id_idx").on(t.storeId, t.recordId)],
);

/**
 * staged_records hold the parts of a streamed upsert until it ends: each part is written in its own
 * short transaction, and the whole upload is applied in one transaction at the end (or discarded).
 */
export const stagedRecords = sqliteTable(
  "staged_records",
  {
    seq: integer("seq").primaryKey({ autoIncrement: true }),
    uploadId: text("upload_id").notNull(),
    recordId: text("record_id").notNull(),
    text: text("text").notNull(),
    metadata: text("metadata").notNull(),
    vector: blob("vector", { mode: "buffer" }).notNull(),
  },
  (t) => [index("staged_records_upload_id_seq_idx").on(t.uploadId, t.seq)],
);
