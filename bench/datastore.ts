// The Datastore's store layer against plain baselines measured in the same run: ingest against bare
// INSERTs into an unindexed table, FTS5/BM25 keyword search against a LIKE scan, and sqlite-vec KNN
// against a brute-force cosine in JavaScript. Shrink with DS_BENCH_KEYWORD_N, DS_BENCH_VECTOR_N,
// DS_BENCH_DIM and DS_BENCH_QUERIES for quick runs.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { createDatastoreStore, type RecordInput } from "../services/datastore/store.js";
import { fmt, report, summary } from "./stats.js";

const keywordN = Number(process.env.DS_BENCH_KEYWORD_N ?? 1_000_000);
const vectorN = Number(process.env.DS_BENCH_VECTOR_N ?? 100_000);
const dim = Number(process.env.DS_BENCH_DIM ?? 384);
const queries = Number(process.env.DS_BENCH_QUERIES ?? 200);
const batch = 5000;

/** rng is a small deterministic generator (mulberry32), so every run indexes the same corpus. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "po", "ga", "fu", "be", "zi", "ho"];

export async function benchDatastore(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "shaker-bench-ds-"));
  const store = createDatastoreStore(join(dir, "datastore.sqlite"));
  const random = rng(42);
  try {
    // --- keyword corpus: common words, plus 100 rare terms each in about 20 records.
    const vocabulary = Array.from({ length: 20_000 }, (_, i) => {
      let w = "";
      for (let n = i + 1; n > 0; n = Math.floor(n / syllables.length)) w += syllables[n % syllables.length];
      return w;
    });
    const rare = Array.from({ length: 100 }, (_, i) => `zyqx${i}rare`);
    const perRare = 20;
    const rareEvery = Math.max(1, Math.floor(keywordN / (rare.length * perRare)));
    const text = (i: number) => {
      const words: string[] = [];
      const len = 8 + Math.floor(random() * 8);
      for (let w = 0; w < len; w++) words.push(vocabulary[Math.floor(random() ** 2 * vocabulary.length)]);
      if (i % rareEvery === 0) words.push(rare[Math.floor(i / rareEvery) % rare.length]);
      return words.join(" ");
    };
    const kw = store.createStore("bench", "keyword", "")!;
    const tiny = new Float32Array([1, 0, 0, 0]);
    let records = 0;
    let t = performance.now();
    for (let i = 0; i < keywordN; i += batch) {
      const part: RecordInput[] = [];
      for (let j = i; j < Math.min(keywordN, i + batch); j++) {
        part.push({ id: `k${j}`, text: text(j), metadata: `{"n":${j % 100}}`, vector: tiny });
      }
      const r = store.upsert(kw.id, part);
      if (!r.ok) throw new Error("keyword ingest refused");
      records += r.upserted;
    }
    const ingestMs = performance.now() - t;

    // Ingest baseline: the same rows into a bare table of a plain connection, no index of any kind
    // (measured on up to 200,000 rows and scaled).
    const bare = new Database(join(dir, "baseline.sqlite"));
    bare.pragma("journal_mode = WAL");
    bare.pragma("synchronous = NORMAL");
    bare.exec("CREATE TABLE bare (id TEXT, text TEXT, metadata TEXT)");
    const insert = bare.prepare("INSERT INTO bare VALUES (?, ?, ?)");
    const n = Math.min(keywordN, 200_000);
    t = performance.now();
    for (let i = 0; i < n; i += batch) {
      bare.transaction(() => {
        for (let j = i; j < Math.min(n, i + batch); j++) insert.run(`k${j}`, text(j), `{"n":${j % 100}}`);
      })();
    }
    const baselineMs = ((performance.now() - t) / n) * keywordN;
    bare.close();
    const rate = records / (ingestMs / 1000);
    const baseRate = keywordN / (baselineMs / 1000);
    report(
      `ingest ${keywordN} records (FTS5 + vec0, no embedding)`,
      `${Math.round(rate)} rec/s`,
      `${Math.round(baseRate)} rec/s bare`,
      rate / baseRate,
      rate >= 20_000 ? "(target >= 20000: met)" : "(target >= 20000: MISSED)",
    );

    // --- keyword search for a selective term.
    const kwTimes: number[] = [];
    const likeTimes: number[] = [];
    let hits = 0;
    for (let q = 0; q < queries; q++) {
      const term = rare[q % rare.length];
      t = performance.now();
      hits += store.keywordSearch(kw.id, term, [], 10).length;
      kwTimes.push(performance.now() - t);
      if (q % 20 === 0) {
        t = performance.now();
        store.likeScan(kw.id, term, 10);
        likeTimes.push(performance.now() - t);
      }
    }
    if (hits === 0) throw new Error("keyword search found nothing");
    const k = summary(kwTimes);
    const like = summary(likeTimes);
    report(
      `keyword p50/p99 @ ${keywordN} (selective term)`,
      `${fmt(k.p50)} / ${fmt(k.p99)} ms`,
      `LIKE ${fmt(like.p50)} / ${fmt(like.p99)} ms`,
      like.p50 / k.p50,
      k.p50 <= 5 ? "(target p50 <= 5 ms: met)" : "(target p50 <= 5 ms: MISSED)",
    );

    // --- vector KNN.
    const vs = store.createStore("bench", "vector", "")!;
    // Embeddings cluster by topic: points scattered around 1,000 random centres, queries too.
    const centres = Array.from({ length: 1000 }, () => Float32Array.from({ length: dim }, () => random() * 2 - 1));
    const around = (out: Float32Array) => {
      const c = centres[Math.floor(random() * centres.length)];
      let s = 0;
      for (let d = 0; d < dim; d++) {
        out[d] = c[d] + (random() * 2 - 1) * 0.8;
        s += out[d] * out[d];
      }
      const norm = Math.sqrt(s);
      for (let d = 0; d < dim; d++) out[d] /= norm;
      return out;
    };
    const all = new Float32Array(vectorN * dim);
    for (let i = 0; i < vectorN; i++) around(all.subarray(i * dim, (i + 1) * dim));
    t = performance.now();
    for (let i = 0; i < vectorN; i += batch) {
      const part: RecordInput[] = [];
      for (let j = i; j < Math.min(vectorN, i + batch); j++)
        part.push({ id: `v${j}`, text: "", metadata: "{}", vector: all.subarray(j * dim, (j + 1) * dim) });
      if (!store.upsert(vs.id, part).ok) throw new Error("vector ingest refused");
    }
    const vecIngest = vectorN / ((performance.now() - t) / 1000);
    process.stdout.write(`  (vector ingest ${vectorN} x ${dim}: ${Math.round(vecIngest)} rec/s)\n`);
    const row = store.store("bench", "vector")!;
    const bruteForce = (q: Float32Array) => {
      const top: { i: number; s: number }[] = [];
      for (let i = 0; i < vectorN; i++) {
        let dot = 0;
        const o = i * dim;
        for (let d = 0; d < dim; d++) dot += all[o + d] * q[d];
        if (top.length < 10 || dot > top[top.length - 1].s) {
          top.push({ i, s: dot });
          top.sort((a, b) => b.s - a.s);
          if (top.length > 10) top.pop();
        }
      }
      return top;
    };
    const vecTimes: number[] = [];
    const bruteTimes: number[] = [];
    let agree = 0;
    const vq = Math.max(10, Math.floor(queries / 4));
    for (let q = 0; q < vq; q++) {
      const query = around(new Float32Array(dim));
      t = performance.now();
      const got = store.vectorSearch(row, query, [], 10);
      vecTimes.push(performance.now() - t);
      t = performance.now();
      const want = bruteForce(query);
      bruteTimes.push(performance.now() - t);
      const gotIds = new Set(got.map((h) => h.id));
      agree += want.filter((w) => gotIds.has(`v${w.i}`)).length / want.length;
    }
    const v = summary(vecTimes);
    const b = summary(bruteTimes);
    report(
      `vector KNN p50/p99 @ ${vectorN} x ${dim}`,
      `${fmt(v.p50)} / ${fmt(v.p99)} ms`,
      `JS cosine ${fmt(b.p50)} / ${fmt(b.p99)} ms`,
      b.p50 / v.p50,
      `${v.p50 <= 30 ? "(target p50 <= 30 ms: met)" : "(target p50 <= 30 ms: MISSED)"} recall@10 ${(agree / vq).toFixed(3)}`,
    );
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
