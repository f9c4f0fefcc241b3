// PostgreSQL's exact vector scan (services/datastore/pg-store.ts: vectors read as bytes through a
// cursor, the cosine computed in the service) against SQLite's exact search on the same records: the
// same hits in the same order, filtered or not, over a store larger than one FETCH, zero vectors last.
// Runs in the "postgresql" project only (SHAKER_TEST_DATABASE_URL; .ci/run sets it).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseFilter } from "../services/datastore/filter.js";
import type { RecordInput, StoreRow } from "../services/datastore/model.js";
import { scanRows } from "../services/datastore/pg-store.js";
import { createDatastoreStore, type DatastoreStore } from "../services/datastore/store.js";
import { type FreshDatabase, freshDatabase, testDialect } from "./databases.js";
import { trueTop } from "./helpers.js";

const dim = 24;
let seed = 11;
const random = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31;
};
const vector = () => Float32Array.from({ length: dim }, () => random() - 0.5);

describe.skipIf(testDialect !== "postgresql")("PostgreSQL's exact vector scan", () => {
  let database: FreshDatabase;
  let pgStore: DatastoreStore;
  let liteStore: DatastoreStore;
  const rows: { pg?: StoreRow; lite?: StoreRow } = {};
  // Two and a half FETCHes' worth, every fiftieth record a zero vector (no score: ranked last).
  const n = Math.floor(2.5 * scanRows);
  const records: RecordInput[] = Array.from({ length: n }, (_, i) => ({
    id: `r${i}`,
    text: `record ${i}`,
    metadata: JSON.stringify({ n: i % 5, zero: i % 50 === 0 }),
    vector: i % 50 === 0 ? new Float32Array(dim) : vector(),
  }));

  beforeAll(async () => {
    database = await freshDatabase();
    pgStore = await createDatastoreStore(database.url);
    // annFrom past the store's size: SQLite answers with its exact scan (sqlite-vec), the reference.
    liteStore = await createDatastoreStore(":memory:", { annFrom: 10 * n });
    for (const [key, s] of [
      ["pg", pgStore],
      ["lite", liteStore],
    ] as const) {
      const created = (await s.createStore("acct", "scan", ""))!;
      expect(await s.upsert(created.id, records)).toMatchObject({ ok: true });
      rows[key] = await s.store("acct", "scan");
    }
  }, 60_000);

  afterAll(async () => {
    await pgStore?.close();
    await liteStore?.close();
    await database?.drop();
  });

  /** truth is the true top `limit` (ids) among the records passing `keep`. */
  const truth = (query: Float32Array, limit: number, keep: (n: number) => boolean = () => true) =>
    trueTop(
      records.filter((r) => keep(JSON.parse(r.metadata).n)),
      query,
      limit,
    );

  const both = async (query: Float32Array, filter: Record<string, unknown> | undefined, limit: number) => {
    const conditions = parseFilter(filter as never);
    const pg = await pgStore.vectorSearch(rows.pg!, query, conditions, limit);
    const lite = await liteStore.vectorSearch(rows.lite!, query, conditions, limit);
    return { pg, lite };
  };

  it("answers the true top 10, as SQLite does, in the same order, with the same scores", async () => {
    expect(pgStore.vectorEngine).toMatch(/^exact scan|pgvector/);
    for (let q = 0; q < 8; q++) {
      const query = vector();
      const { pg, lite } = await both(query, undefined, 10);
      expect(pg.map((h) => h.id)).toEqual(truth(query, 10));
      expect(pg.map((h) => h.id)).toEqual(lite.map((h) => h.id));
      for (const [i, hit] of pg.entries()) {
        expect(hit.score).toBeCloseTo(lite[i].score, 5);
        expect(hit).toMatchObject({ text: lite[i].text, metadata: lite[i].metadata });
      }
    }
  });

  it("applies the filter inside the scan and still returns `limit` hits", async () => {
    for (let q = 0; q < 4; q++) {
      const query = vector();
      const { pg, lite } = await both(query, { n: 3 }, 25);
      expect(pg.map((h) => h.id)).toEqual(truth(query, 25, (n) => n === 3));
      expect(pg.every((h) => JSON.parse(h.metadata).n === 3)).toBe(true);
      expect(pg.map((h) => h.id)).toEqual(lite.map((h) => h.id));
    }
  });

  it("ranks zero vectors last, after every scored record, as SQLite does", async () => {
    // Every zero vector's n is 0: the filter passes all of them and a fifth of the rest, and the limit all of those.
    const { pg, lite } = await both(vector(), { n: { $in: [0, 1] } }, n);
    const zeros = records.filter((r) => r.vector.every((x) => x === 0)).length;
    const passing = records.filter((r) => [0, 1].includes(JSON.parse(r.metadata).n)).length;
    expect(pg).toHaveLength(passing);
    const scored = pg.length - zeros;
    expect(pg.slice(0, scored).every((h) => Number.isFinite(h.score) && JSON.parse(h.metadata).zero === false)).toBe(true);
    expect(pg.slice(scored).every((h) => JSON.parse(h.metadata).zero === true)).toBe(true);
    expect(pg.slice(0, scored).map((h) => h.id)).toEqual(lite.slice(0, scored).map((h) => h.id));
    expect(new Set(pg.slice(scored).map((h) => h.id))).toEqual(new Set(lite.slice(scored).map((h) => h.id)));
    expect(pg.slice(scored).map((h) => h.score)).toEqual(lite.slice(scored).map((h) => h.score));
  });
});
