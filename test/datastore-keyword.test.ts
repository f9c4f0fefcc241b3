// The keyword lists (services/datastore/keyword-lists.ts) at the store layer: every unfiltered
// keyword search answered from them against FTS5's own ranking of the same query, through appends,
// longer records, updates, deletes, a dropped store and the entry cap.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { varint } from "../services/datastore/keyword-lists.js";
import type { RecordInput } from "../services/datastore/model.js";
import { openSqliteEngine } from "../services/datastore/sqlite-engine.js";
import { testDialect } from "./databases.js";

let seed = 7;
const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
// Skewed toward the first words, with stems FTS5's porter tokenizer folds together (run, running, runs).
const vocabulary = [
  "the",
  "run",
  "running",
  "runs",
  "data",
  "store",
  "Café",
  "cafe",
  "search",
  "engine",
  ...Array.from({ length: 300 }, (_, i) => `w${i}`),
];
function text(words: number): string {
  return Array.from({ length: words }, () => vocabulary[Math.floor(random() ** 3 * vocabulary.length)]).join(" ");
}
const tiny = new Float32Array([1, 0, 0, 0]);
function records(n: number, from: number, words: () => number): RecordInput[] {
  return Array.from({ length: n }, (_, i) => ({ id: `r${from + i}`, text: text(words()), metadata: "{}", vector: tiny }));
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// The lists are SQLite's, over FTS5: PostgreSQL ranks with ts_rank in its own index.
describe.skipIf(testDialect === "postgresql")("datastore keyword lists", () => {
  async function open(keywordListEntries?: number) {
    const dir = mkdtempSync(join(tmpdir(), "shaker-kw-"));
    dirs.push(dir);
    const engine = await openSqliteEngine(join(dir, "datastore.db"), { keywordListEntries });
    const store = engine.createStore("acct", "kw", "")!;
    /** fts is FTS5's own ranking of the whole query, every match: [id, score]. */
    const fts = (query: string) =>
      engine.db
        .sqlite!.prepare(
          `SELECT r.record_id AS id, -bm25(ds_fts_${store.id}) AS score FROM ds_fts_${store.id} JOIN records r ON r.rowid = ds_fts_${store.id}.rowid
           WHERE ds_fts_${store.id} MATCH ? ORDER BY bm25(ds_fts_${store.id})`,
        )
        .all([...new Set(query.toLowerCase().match(/[\p{L}\p{N}]+/gu))].map((w) => `"${w}"`).join(" OR ")) as {
        id: string;
        score: number;
      }[];
    /** same checks a search against FTS5's: the same scores in order, and the same records but for ties at the end. */
    const same = (query: string, limit: number) => {
      const got = engine.keywordSearch(store, query, [], limit);
      const want = fts(query).slice(0, limit);
      expect(got.length, query).toBe(want.length);
      for (let i = 0; i < got.length; i++) expect(got[i].score, `${query} #${i}`).toBeCloseTo(want[i].score, 9);
      const last = want.at(-1)?.score;
      const firm = (hits: { id: string; score: number }[]) =>
        hits
          .filter((h) => Math.abs(h.score - (last ?? 0)) > 1e-9)
          .map((h) => h.id)
          .sort();
      expect(firm(got), query).toEqual(firm(want));
    };
    const queries = [
      "the",
      "run",
      "running data",
      "store search engine the",
      "cafe",
      "w5 w7",
      "w299",
      "nothing here",
      "data the w1",
      // More words than the lists take: FTS5's.
      Array.from({ length: 80 }, (_, i) => `w${i * 3}`).join(" "),
    ];
    return { engine, store, same, queries };
  }

  it("answers as FTS5 ranks, through appends, longer records, updates and deletes", async () => {
    const { engine, store, same, queries } = await open();
    engine.upsert(
      store.id,
      records(2000, 0, () => 3 + Math.floor(random() * 10)),
    );
    for (const q of queries) for (const limit of [1, 10, 100]) same(q, limit);
    const held = engine.keywordLists.entries;
    expect(held).toBeGreaterThan(0);

    // Appended records are read into the lists; longer ones raise the average length past the lists' order.
    engine.upsert(
      store.id,
      records(500, 2000, () => 30 + Math.floor(random() * 30)),
    );
    for (const q of queries) same(q, 10);
    expect(engine.keywordLists.entries).toBeGreaterThan(held);

    // An update and a delete: the lists are built again.
    engine.upsert(store.id, [{ id: "r5", text: "w299 w299 w299 run", metadata: "{}", vector: tiny }]);
    for (const q of queries) same(q, 10);
    expect(engine.keywordSearch(store, "w299", [], 1)[0].id).toBe("r5");
    engine.deleteRecords(store, ["r5", "r6", "r2400"]);
    for (const q of queries) same(q, 10);
    expect(engine.keywordSearch(store, "w299", [], 10).map((h) => h.id)).not.toContain("r5");
    await engine.close();
  });

  it("reads a few entries of a common word's list for a top 10", async () => {
    const { engine, store } = await open();
    engine.upsert(
      store.id,
      records(5000, 0, () => 3 + Math.floor(random() * 10)),
    );
    engine.keywordSearch(store, "the", [], 10);
    const all = engine.keywordLists.entries;
    engine.keywordSearch(store, "the", [], 10);
    expect(all).toBeGreaterThan(2000);
    expect(engine.keywordLists.visited).toBeLessThan(all / 10);
    await engine.close();
  });

  it("leaves a word whose list would pass the cap to FTS5, with the same answer", async () => {
    const { engine, store, same, queries } = await open(300);
    engine.upsert(
      store.id,
      records(2000, 0, () => 3 + Math.floor(random() * 10)),
    );
    for (const q of queries) same(q, 10);
    expect(engine.keywordLists.entries).toBeLessThanOrEqual(300);
    await engine.close();
  });

  it("drops lists of the account holding the most first: one account's searches cannot push out another's", async () => {
    const { engine } = await open(1500);
    const word = (w: string, n: number, from: number): RecordInput[] =>
      Array.from({ length: n }, (_, i) => ({ id: `r${from + i}`, text: `${w} filler${i % 3}`, metadata: "{}", vector: tiny }));
    const small = engine.createStore("acct-small", "kw", "")!;
    engine.upsert(small.id, word("alpha", 300, 0));
    const large = engine.createStore("acct-large", "kw", "")!;
    engine.upsert(large.id, [...word("beta", 700, 0), ...word("gamma", 700, 700), ...word("delta", 700, 1400)]);
    expect(engine.keywordSearch(small, "alpha", [], 10)).toHaveLength(10);
    const kept = engine.keywordLists.heldBy("acct-small");
    expect(kept).toBeGreaterThanOrEqual(300);
    // The large account's common words pass the cap again and again: its own lists go, not the small one's.
    for (const w of ["beta", "gamma", "delta", "beta", "filler0", "gamma"]) expect(engine.keywordSearch(large, w, [], 10)).toHaveLength(10);
    expect(engine.keywordLists.entries).toBeLessThanOrEqual(1500);
    expect(engine.keywordLists.heldBy("acct-small")).toBe(kept);
    // Once the small account wants the most, its own lists are the ones that go (the one just read
    // answers its search all the same).
    const largeHeld = engine.keywordLists.heldBy("acct-large");
    expect(largeHeld).toBeGreaterThan(0);
    const wide = engine.createStore("acct-small", "wide", "")!;
    engine.upsert(wide.id, word("epsilon", 1200, 0));
    expect(engine.keywordSearch(wide, "epsilon", [], 10)).toHaveLength(10);
    expect(engine.keywordLists.entries).toBeLessThanOrEqual(1500);
    expect(engine.keywordLists.heldBy("acct-large")).toBe(largeHeld);
    expect(engine.keywordLists.heldBy("acct-small")).toBeLessThan(kept);
    await engine.close();
  });

  it("forgets a dropped store's lists", async () => {
    const { engine, store } = await open();
    engine.upsert(
      store.id,
      records(100, 0, () => 5),
    );
    expect(engine.keywordSearch(store, "the", [], 10).length).toBeGreaterThan(0);
    engine.dropStore(store.id);
    const again = engine.createStore("acct", "kw", "")!;
    engine.upsert(again.id, [{ id: "only", text: "the one", metadata: "{}", vector: tiny }]);
    expect(engine.keywordSearch(again, "the", [], 10).map((h) => h.id)).toEqual(["only"]);
    await engine.close();
  });

  it("decodes SQLite varints", () => {
    expect(varint(Uint8Array.from([0x8c, 0x9a, 0x40]), 0)).toEqual([200000, 3]);
    expect(varint(Uint8Array.from([0x05]), 0)).toEqual([5, 1]);
    expect(varint(Uint8Array.from([0x81, 0x00, 0x07]), 0)).toEqual([128, 2]);
  });
});
