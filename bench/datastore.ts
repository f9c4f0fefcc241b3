// The Datastore, each figure beside a baseline measured in the same run:
// - ingest: the store layer (FTS5 + vec0 + ANN) against bare INSERTs into an unindexed table, and
//   POST /v1/datastores/{name}/records (one NDJSON request, one transaction, its body made
//   beforehand) against the store layer; during a second such upload, to a `shaker serve` of its
//   own process from a client process of its own, its event loop's delay and a trivial invoke's p99
//   against their idle values;
// - keyword search (a selective and a common term): the store layer (its keyword lists) against FTS5
//   ranking every match, a word's first search (its list built) apart, and REST and RPC (binary
//   Protobuf over the Connect protocol, from node:http as REST's calls are, and from Connect-ES's
//   client) against the store layer on the same corpus;
// - vector ingest through REST, its vectors written out and as base64 (each body made beforehand),
//   against the store layer at the same size; vector searches of one store during another store's
//   upload against the same searches idle;
// - vector search: the ANN index (usearch HNSW, exact re-ranking) against an exact scan of the same
//   records, with recall@10, and REST (the query written out, and as base64) and RPC against the
//   store layer on the same store.
// - PostgreSQL: the same store layer on a fresh database (SHAKER_BENCH_DATABASE_URL, else the local
//   server; dropped after; skipped when unreachable): ingest and keyword search beside SQLite's, and
//   its exact vector scan (pgvector is not measured) beside SQLite's exact scan of the same records.
// Sizes: DS_BENCH_KEYWORD_N (1,000,000), DS_BENCH_VECTOR_N (1,000,000), DS_BENCH_DIM (384),
// DS_BENCH_QUERIES (200), DS_BENCH_PG_N (200,000 keyword records), DS_BENCH_PG_VECTOR_N (20,000);
// small ones give a quick look.

import { execFile } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import Database from "better-sqlite3";
import { DatastoreService, SearchMode, SearchRequestSchema } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { annPath } from "../services/datastore/ann.js";
import { annK, type RecordInput, type StoreRow } from "../services/datastore/model.js";
import { openSqliteEngine, type SqliteEngine } from "../services/datastore/sqlite-engine.js";
import { createDatastoreStore } from "../services/datastore/store.js";
import { createDatabase, type FreshDatabase } from "../test/databases.js";
import { createCaller } from "./client.js";
import type { Loop, Measured } from "./invokes-during-upload.js";
import { startBenchServer } from "./server.js";
import { fmt, report, summary } from "./stats.js";
import { checkpointed, ndjson, sleep, upload } from "./uploads.js";

const keywordN = Number(process.env.DS_BENCH_KEYWORD_N ?? 1_000_000);
const vectorN = Number(process.env.DS_BENCH_VECTOR_N ?? 1_000_000);
const dim = Number(process.env.DS_BENCH_DIM ?? 384);
const queries = Number(process.env.DS_BENCH_QUERIES ?? 200);
const pgN = Math.min(keywordN, Number(process.env.DS_BENCH_PG_N ?? 200_000));
const pgVectorN = Math.min(vectorN, Number(process.env.DS_BENCH_PG_VECTOR_N ?? 20_000));
const pgServer = process.env.SHAKER_BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
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

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** diskReadBytes is what this process has read from storage (not from the page cache) so far; 0 where /proc/self/io is not. */
function diskReadBytes(): number {
  try {
    return Number(/^read_bytes: (\d+)/m.exec(readFileSync("/proc/self/io", "utf8"))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** exactTop is the ids ("v<i>") of the k vectors of `all` most similar to `query` by cosine (each row of `all` is a vector of `dim`). */
function exactTop(all: Float32Array, dim: number, query: Float32Array, k: number): Set<string> {
  let qn = 0;
  for (let d = 0; d < dim; d++) qn += query[d] * query[d];
  const best: { score: number; i: number }[] = [];
  for (let i = 0, o = 0; o < all.length; i++, o += dim) {
    let dot = 0;
    let n = 0;
    for (let d = 0; d < dim; d++) {
      dot += query[d] * all[o + d];
      n += all[o + d] * all[o + d];
    }
    const score = dot / Math.sqrt(qn * n);
    if (best.length < k || score > best[best.length - 1].score) {
      best.push({ score, i });
      best.sort((a, b) => b.score - a.score);
      if (best.length > k) best.pop();
    }
  }
  return new Set(best.map((b) => `v${b.i}`));
}

/** bareRoundTrips times `n` POSTs (after as many unmeasured) to a node:http server that answers a fixed body of ten hits. */
async function bareRoundTrips(n: number): Promise<number[]> {
  const hits = JSON.stringify({
    data: Array.from({ length: 10 }, (_, i) => ({ id: `k${i}`, text: "a record's text of some words", metadata: { n: i }, score: 1.5 })),
  });
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end(hits));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const caller = createCaller(`http://127.0.0.1:${(server.address() as { port: number }).port}`, { "content-type": "application/json" });
  const times: number[] = [];
  try {
    for (let i = 0; i < 2 * n; i++) {
      const t0 = performance.now();
      await caller.post("/search", '{"query":"zyqx1rare","limit":10}');
      if (i >= n) times.push(performance.now() - t0);
    }
  } finally {
    caller.close();
    server.close();
  }
  return times;
}

/**
 * passes runs `search` for every query, once on its own for each path, one path after the other.
 * Each client's searches are timed in a pass of their own: interleaved, each RPC call's garbage
 * (Connect's client and server make AbortSignals per call, which V8 copies at every young-generation
 * collection) was partly collected during the REST calls after it; a REST client alone has none.
 */
async function passes<P extends string>(
  paths: readonly P[],
  queries: number,
  search: (path: P, q: number) => Promise<void>,
): Promise<void> {
  for (const path of paths) for (let q = 0; q < queries; q++) await search(path, q);
}

/**
 * invokesDuringUpload reports a trivial invoke's times and the event loop of a `shaker serve` of
 * its own, idle and during uploads of `body`, measured by invokes-during-upload.ts in a process of
 * its own (its comment says why and how).
 */
async function invokesDuringUpload(dir: string, body: Buffer[], records: number): Promise<void> {
  const bodyFile = join(dir, "upload.ndjson");
  const fd = openSync(bodyFile, "w");
  for (const chunk of body) writeSync(fd, chunk);
  closeSync(fd);
  const out = await new Promise<string>((resolve, reject) =>
    execFile(
      process.execPath,
      [
        fileURLToPath(new URL("../bin/run-ts.js", import.meta.url)),
        fileURLToPath(new URL("./invokes-during-upload.ts", import.meta.url)),
        dir,
        bodyFile,
      ],
      { maxBuffer: 64 << 20 },
      (err, stdout, stderr) => (err ? reject(new Error(`invokes-during-upload.ts failed: ${stderr || err.message}`)) : resolve(stdout)),
    ),
  );
  rmSync(bodyFile, { force: true });
  const m: Measured = JSON.parse(out.trim().split("\n").at(-1)!);
  const rounds = m.busy.length;
  const i0 = summary(m.idle.flat());
  const i1 = summary(m.busy.flat());
  const alone = m.busy.map((b, r) => `${(summary(b).p99 / summary(m.idle[r]).p99).toFixed(2)}x`).join(", ");
  report(
    `trivial invoke p50/p99 during a second upload (${Math.round((rounds * records) / (m.busyMs / 1000))} rec/s; server process)`,
    `${fmt(i1.p50)} / ${fmt(i1.p99)} ms (n=${i1.n})`,
    `idle ${fmt(i0.p50)} / ${fmt(i0.p99)} ms (n=${i0.n})`,
    i1.p99 / i0.p99,
    `${i1.p99 <= 2 * i0.p99 ? "(target p99 <= 2x idle: met)" : "(target p99 <= 2x idle: MISSED)"}; ${rounds} rounds pooled, each alone: ${alone}`,
  );
  const loopP99 = (xs: Loop[]) => median(xs.map((x) => x.p99));
  const loopMax = (xs: Loop[]) => Math.max(...xs.map((x) => x.max));
  report(
    "event-loop delay p99/max during that upload",
    `${fmt(loopP99(m.busyLoops))} / ${fmt(loopMax(m.busyLoops))} ms`,
    `idle ${fmt(loopP99(m.idleLoops))} / ${fmt(loopMax(m.idleLoops))} ms`,
    loopP99(m.busyLoops) / loopP99(m.idleLoops),
    `(the median of ${rounds} rounds' p99, the max of all)`,
  );
}

export async function benchDatastore(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "shaker-bench-ds-"));
  const store = await openSqliteEngine(join(dir, "datastore.sqlite"));
  const server = await startBenchServer({ workers: 1 });
  const caller = createCaller(server.url, { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" });
  // The RPC clients send Protobuf's binary encoding, as gRPC clients in every language do (Connect-ES's
  // default is JSON): node:http posting each request's bytes (the Connect protocol's unary call, as a
  // load generator sends it; what the server adds, measured as REST's is), and Connect-ES's client,
  // whose own CPU (it runs in this process) is part of its figure.
  const rpcCaller = createCaller(server.url, { authorization: `Bearer ${server.apiKey}`, "content-type": "application/proto" });
  const rpc = createClient(DatastoreService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true }));
  const rpcHeaders = { authorization: `Bearer ${server.apiKey}` };
  const dropServerStore = (name: string) =>
    fetch(`${server.url}/v1/datastores/${name}`, { method: "DELETE", headers: { authorization: `Bearer ${server.apiKey}` } });
  const searchPath = "/shaker.datastore.v1.DatastoreService/Search";
  const searchBytes = (request: MessageInitShape<typeof SearchRequestSchema>) =>
    toBinary(SearchRequestSchema, create(SearchRequestSchema, request));
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
    // The corpus is drawn once, so the store layer and REST index the same texts.
    const random = rng(42);
    const texts: string[] = [];
    for (let i = 0; i < keywordN; i++) {
      const words: string[] = [];
      const len = 8 + Math.floor(random() * 8);
      for (let w = 0; w < len; w++) words.push(vocabulary[Math.floor(random() ** 2 * vocabulary.length)]);
      if (i % rareEvery === 0) words.push(rare[Math.floor(i / rareEvery) % rare.length]);
      texts.push(words.join(" "));
    }
    // --- Keyword ingest: the store layer, and REST in one NDJSON request whose body is made
    // beforehand, as a load generator sends a prepared body (this process is the client too, and
    // making a million JSON lines meanwhile would be charged to the server). In alternating rounds,
    // as the vector ingest below (its comment says why), each REST rate against its own round's store
    // layer, the median reported: one round each moved from 0.62x to 0.89x between two runs of an
    // hour. The first round's stores are the ones searched below ("keyword" in both); the others are
    // dropped.
    const engineFile = join(dir, "datastore.sqlite");
    const serverDb = join(server.dataDir, "datastore.db");
    const tiny = new Float32Array([1, 0, 0, 0]);
    const keywordBody = [
      ...ndjson(keywordN, (j) => JSON.stringify({ id: `k${j}`, text: texts[j], metadata: { n: j % 100 }, vector: [1, 0, 0, 0] })),
    ];
    /**
     * storeLayerIngest writes records 0 to n-1 (`record` makes each) into a new store of the store
     * layer, in batches as an upload's parts; the store and the rate. Each ingest is timed on its
     * own: the WAL of the write before copied first, the store layer's and the server's (a
     * checkpointer's thread does it after a commit, and would otherwise be timed with this one).
     */
    const storeLayerIngest = async (name: string, n: number, record: (j: number) => RecordInput) => {
      await checkpointed(engineFile);
      await checkpointed(serverDb);
      const row = store.createStore("bench", name, "")!;
      const t0 = performance.now();
      for (let i = 0; i < n; i += batch) {
        const part: RecordInput[] = [];
        for (let j = i; j < Math.min(n, i + batch); j++) part.push(record(j));
        if (!store.upsert(row.id, part).ok) throw new Error(`ingest into ${name} refused`);
      }
      return { row, rate: n / ((performance.now() - t0) / 1000) };
    };
    const keywordRecord = (j: number): RecordInput => ({ id: `k${j}`, text: texts[j], metadata: `{"n":${j % 100}}`, vector: tiny });
    /** newServerStore creates a store through REST. */
    const newServerStore = async (name: string) => {
      const made = await caller.post("/v1/datastores", JSON.stringify({ name }));
      if (made.status !== 201) throw new Error(`store ${name} not created: ${made.status} ${made.body}`);
    };
    /** restIngest uploads `n` records into the store `name` in one request; its rate. Timed on its own, as storeLayerIngest. */
    const restIngest = async (name: string, n: number, body: Iterable<Buffer>) => {
      await checkpointed(engineFile);
      await checkpointed(serverDb);
      const t0 = performance.now();
      const res = await upload(server.url, server.apiKey, name, body);
      if (res.status !== 200) throw new Error(`REST ingest into ${name} failed: ${res.status} ${res.body.slice(0, 300)}`);
      return n / ((performance.now() - t0) / 1000);
    };
    const keywordRounds = Number(process.env.DS_BENCH_KEYWORD_ROUNDS ?? 3);
    const keywordIngest: { store: number; rest: number }[] = [];
    let kw: StoreRow | undefined;
    for (let r = 0; r < keywordRounds; r++) {
      const one = { store: 0, rest: 0 };
      for (const side of r % 2 === 0 ? (["store", "rest"] as const) : (["rest", "store"] as const)) {
        if (side === "store") {
          const { row, rate } = await storeLayerIngest(r === 0 ? "keyword" : `keyword-${r}`, keywordN, keywordRecord);
          one.store = rate;
          if (r === 0) kw = row;
          else store.dropStore(row.id);
        } else {
          const name = r === 0 ? "keyword" : `keyword-${r}`;
          await newServerStore(name);
          one.rest = await restIngest(name, keywordN, keywordBody);
          if (r > 0) await dropServerStore(`keyword-${r}`);
        }
      }
      keywordIngest.push(one);
    }
    if (!kw) throw new Error("DS_BENCH_KEYWORD_ROUNDS must be at least 1");
    const rate = median(keywordIngest.map((x) => x.store));

    // Ingest baseline: the same rows into a bare table of a plain connection, no index of any kind
    // (measured on up to 200,000 rows and scaled).
    const bare = new Database(join(dir, "baseline.sqlite"));
    bare.pragma("journal_mode = WAL");
    bare.pragma("synchronous = NORMAL");
    bare.exec("CREATE TABLE bare (id TEXT, text TEXT, metadata TEXT)");
    const insert = bare.prepare("INSERT INTO bare VALUES (?, ?, ?)");
    const n = Math.min(keywordN, 200_000);
    let t = performance.now();
    for (let i = 0; i < n; i += batch) {
      bare.transaction(() => {
        for (let j = i; j < Math.min(n, i + batch); j++) insert.run(`k${j}`, texts[j], `{"n":${j % 100}}`);
      })();
    }
    const baseRate = n / ((performance.now() - t) / 1000);
    bare.close();
    report(
      `ingest ${keywordN}, store layer (FTS5 + vec0 + ANN)`,
      `${Math.round(rate)} rec/s`,
      `${Math.round(baseRate)} rec/s bare`,
      rate / baseRate,
      `(median of ${keywordRounds} rounds)`,
    );
    const restRatios = keywordIngest.map((x) => x.rest / x.store);
    const restRatio = median(restRatios);
    report(
      `ingest ${keywordN}, REST NDJSON (one request)`,
      `${Math.round(median(keywordIngest.map((x) => x.rest)))} rec/s`,
      `${Math.round(rate)} rec/s store layer`,
      restRatio,
      `${restRatio >= 0.7 ? "(target >= 0.7x: met)" : "(target >= 0.7x: MISSED)"}; median of ${keywordRounds} rounds: ${restRatios.map((x) => `${x.toFixed(2)}x`).join(", ")} (store layer ${keywordIngest.map((x) => Math.round(x.store)).join(", ")} rec/s)`,
    );
    // The upload's WAL is copied into the database file by the checkpointer's thread after its commit
    // (seconds at this size): done before anything else is timed, so nothing is timed against it.
    await checkpointed(serverDb);
    await checkpointed(engineFile);
    await invokesDuringUpload(dir, keywordBody, keywordN);
    keywordBody.length = 0;

    // --- keyword search: a selective term (about 20 records) and a common one.
    const df = (w: string) => texts.reduce((c, x) => c + (` ${x} `.includes(` ${w} `) ? 1 : 0), 0);
    const common = vocabulary[0];
    const terms = { selective: (q: number) => rare[q % rare.length], common: (q: number) => vocabulary[q % 5] };
    process.stdout.write(`  (selective terms match ~${df(rare[0])} records, common ones up to ${df(common)})\n`);
    const sqliteKeyword: Record<string, ReturnType<typeof summary>> = {};
    // The floor under REST's figures: a bare node:http server in this process answering ten hits'
    // worth of JSON, called by the same client.
    const floor = summary(await bareRoundTrips(queries));
    process.stdout.write(`  (a bare HTTP round trip, node:http with the same client: ${fmt(floor.p50)} / ${fmt(floor.p99)} ms p50/p99)\n`);
    // FTS5 ranking every match (ORDER BY rank LIMIT 10), the store layer's way before its keyword
    // lists, is the baseline of the store's search: the same query, the same scores.
    const ftsRank = store.db.sqlite!.prepare(
      `SELECT r.record_id AS id, -rank AS score FROM ds_fts_${kw.id} JOIN records r ON r.rowid = ds_fts_${kw.id}.rowid
       WHERE ds_fts_${kw.id} MATCH ? ORDER BY rank LIMIT 10`,
    );
    for (const [kind, term] of Object.entries(terms)) {
      const st: number[] = [];
      const first: number[] = [];
      const rest: number[] = [];
      const viaRpc: number[] = [];
      const viaConnectEs: number[] = [];
      const fts: number[] = [];
      const searched = new Set<string>();
      for (let q = 0; q < queries; q++) {
        const w = term(q);
        t = performance.now();
        const hits = store.keywordSearch(kw, w, [], 10);
        // A word's first search builds its list: timed apart from the searches that use it.
        (searched.has(w) ? st : first).push(performance.now() - t);
        searched.add(w);
        if (hits.length === 0) throw new Error(`keyword search for ${w} found nothing`);
        t = performance.now();
        const ranked = ftsRank.all(`"${w}"`) as { id: string; score: number }[];
        fts.push(performance.now() - t);
        if (Math.abs(ranked[9].score - hits[9].score) > 1e-9 * hits[9].score)
          throw new Error(`keyword search for ${w}: the 10th score is ${hits[9].score}, FTS5 ranks ${ranked[9].score}`);
      }
      // The server's engine builds its own lists: each word's first search there is left out of the
      // figures, as the store layer's is above.
      for (const w of searched) await caller.post("/v1/datastores/keyword/search", JSON.stringify({ query: w, limit: 10 }));
      // Each path's first `warmup` searches are not timed, as the vector section's: the selective
      // words come first, and their figures paid for compiling each path's code (RPC's p50 0.58 ms
      // there against 0.49 for the common words after, at a store twice as fast for selective words).
      const warmup = 50;
      await passes(["rest", "rpc", "connect-es"] as const, warmup + queries, async (path, i) => {
        const w = term(i % queries);
        const timed = i >= warmup;
        const t0 = performance.now();
        if (path === "rest") {
          const r = await caller.post("/v1/datastores/keyword/search", JSON.stringify({ query: w, limit: 10 }));
          if (timed) rest.push(performance.now() - t0);
          if (r.status !== 200) throw new Error(`REST search failed: ${r.body}`);
        } else if (path === "rpc") {
          const r = await rpcCaller.post(searchPath, searchBytes({ store: "keyword", query: w, mode: SearchMode.KEYWORD, limit: 10 }));
          if (timed) viaRpc.push(performance.now() - t0);
          if (r.status !== 200) throw new Error(`RPC search failed: ${r.body}`);
        } else {
          await rpc.search({ store: "keyword", query: w, mode: SearchMode.KEYWORD, limit: 10 }, { headers: rpcHeaders });
          if (timed) viaConnectEs.push(performance.now() - t0);
        }
      });
      const [a, b, c, f, one, ces] = [summary(st), summary(rest), summary(viaRpc), summary(fts), summary(first), summary(viaConnectEs)];
      sqliteKeyword[kind] = a;
      report(
        `keyword p50/p99 @ ${keywordN} (${kind}), store`,
        `${fmt(a.p50)} / ${fmt(a.p99)} ms`,
        `FTS5 ranking all ${fmt(f.p50)} / ${fmt(f.p99)} ms`,
        f.p50 / a.p50,
      );
      report(
        `keyword first search of each of ${first.length} words (${kind}), store`,
        `${fmt(one.p50)} ms p50, ${fmt(Math.max(...first))} max`,
        `FTS5 ranking all ${fmt(f.p50)} ms`,
        f.p50 / one.p50,
        "(the word's list built)",
      );
      report(
        `keyword p50/p99 @ ${keywordN} (${kind}), REST`,
        `${fmt(b.p50)} / ${fmt(b.p99)} ms`,
        `store ${fmt(a.p50)} ms`,
        b.p50 / a.p50,
        `adds ${fmt(b.p50 - a.p50)} ms, ${fmt(b.p50 - a.p50 - floor.p50)} over a bare round trip ${b.p50 <= 2 ? "(target p50 <= 2 ms: met)" : "(target p50 <= 2 ms: MISSED)"}`,
      );
      report(
        `keyword p50/p99 @ ${keywordN} (${kind}), RPC`,
        `${fmt(c.p50)} / ${fmt(c.p99)} ms`,
        `store ${fmt(a.p50)} ms`,
        c.p50 / a.p50,
        `adds ${fmt(c.p50 - a.p50)} ms, ${fmt(c.p50 - a.p50 - floor.p50)} over a bare round trip (Connect protocol from node:http) ${c.p50 - a.p50 <= 0.5 ? "(target adds <= 0.5 ms: met)" : "(target adds <= 0.5 ms: MISSED)"}`,
      );
      report(
        `keyword p50/p99 @ ${keywordN} (${kind}), RPC from Connect-ES`,
        `${fmt(ces.p50)} / ${fmt(ces.p99)} ms`,
        `store ${fmt(a.p50)} ms`,
        ces.p50 / a.p50,
        `adds ${fmt(ces.p50 - a.p50)} ms (the client's own CPU in this process included)`,
      );
    }

    // --- vector: clustered embeddings (points scattered around 1,000 random centres, queries too),
    // uploaded through REST; the store layer then opens the server's database (and the index file the
    // writer thread saved) to search the same records.
    const vrandom = rng(7);
    const centres = Array.from({ length: 1000 }, () => Float32Array.from({ length: dim }, () => vrandom() * 2 - 1));
    const around = (out: Float32Array) => {
      const c = centres[Math.floor(vrandom() * centres.length)];
      let s = 0;
      for (let d = 0; d < dim; d++) {
        out[d] = c[d] + (vrandom() * 2 - 1) * 0.8;
        s += out[d] * out[d];
      }
      const norm = Math.sqrt(s);
      for (let d = 0; d < dim; d++) out[d] /= norm;
      return out;
    };
    const all = new Float32Array(vectorN * dim);
    for (let i = 0; i < vectorN; i++) around(all.subarray(i * dim, (i + 1) * dim));
    const round = (x: number) => Math.round(x * 1e6) / 1e6;
    // What the store is sent, to the digit: the true top 10 below is computed from these values.
    for (let i = 0; i < all.length; i++) all[i] = round(all[i]);
    // Vector ingest of the first `vn` records: the store layer, and REST with the vectors written out
    // as JSON numbers and as the base64 of their float32s (the API takes both), each into a store of
    // its own. Both bodies are made before any clock starts: this process is the server's, and
    // writing out 384 floats a record (about 50 µs) would be timed as the server's. In alternating
    // rounds (as throughputAB), each REST rate against its own round's store layer, the median
    // reported: on this shared two-core VM the machine's speed drifts by a fifth within minutes (exp:
    // the store layer alone 8,148 to 11,387 rec/s over twelve runs of 15,000 records), and a REST
    // figure timed a minute after its baseline carried that drift. The last round's written-out
    // upload is the store "vector" searched below; the others are dropped.
    const vn = Math.min(vectorN, 100_000);
    const vectorOf = (j: number) => Array.from(all.subarray(j * dim, (j + 1) * dim), round);
    const packed = (j: number) => Buffer.from(Float32Array.from(all.subarray(j * dim, (j + 1) * dim)).buffer).toString("base64");
    const line = (j: number) => JSON.stringify({ id: `v${j}`, text: "", metadata: { even: j % 2 === 0 }, vector: vectorOf(j) });
    const packedLine = (j: number) => JSON.stringify({ id: `v${j}`, text: "", metadata: { even: j % 2 === 0 }, vector: packed(j) });
    const vectorRecord = (j: number): RecordInput => ({
      id: `v${j}`,
      text: "",
      metadata: `{"even":${j % 2 === 0}}`,
      vector: all.subarray(j * dim, (j + 1) * dim),
    });
    const writtenBody = [...ndjson(vn, line)];
    const packedBody = [...ndjson(vn, packedLine)];
    const ingestRounds = Number(process.env.DS_BENCH_INGEST_ROUNDS ?? 5);
    const ingest: { store: number; written: number; packed: number }[] = [];
    for (let r = 0; r < ingestRounds; r++) {
      const last = r === ingestRounds - 1;
      const one = { store: 0, written: 0, packed: 0 };
      // A B C, then C B A: what drifts within a round weighs on each side alike over two rounds.
      for (const side of r % 2 === 0 ? (["store", "written", "packed"] as const) : (["packed", "written", "store"] as const)) {
        if (side === "store") {
          const { row, rate } = await storeLayerIngest(`vector-${r}`, vn, vectorRecord);
          one.store = rate;
          store.dropStore(row.id);
        } else if (side === "written") {
          const name = last ? "vector" : `vector-written-${r}`;
          await newServerStore(name);
          one.written = await restIngest(name, vn, writtenBody);
          if (!last) await dropServerStore(name);
        } else {
          await newServerStore(`vector-base64-${r}`);
          one.packed = await restIngest(`vector-base64-${r}`, vn, packedBody);
          await dropServerStore(`vector-base64-${r}`);
        }
      }
      ingest.push(one);
    }
    writtenBody.length = 0;
    packedBody.length = 0;
    const vecStoreRate = median(ingest.map((x) => x.store));
    for (const [side, label] of [
      ["written", "REST NDJSON"],
      ["packed", "REST NDJSON, vectors as base64"],
    ] as const) {
      const ratios = ingest.map((x) => x[side] / x.store);
      const ratio = median(ratios);
      report(
        `ingest ${vn} x ${dim}, ${label}`,
        `${Math.round(median(ingest.map((x) => x[side])))} rec/s`,
        `${Math.round(vecStoreRate)} rec/s store layer`,
        ratio,
        `${ratio >= 0.7 ? "(target >= 0.7x: met)" : "(target >= 0.7x: MISSED)"}; median of ${ingest.length} rounds: ${ratios.map((x) => `${x.toFixed(2)}x`).join(", ")} (store layer ${ingest.map((x) => Math.round(x.store)).join(", ")} rec/s)`,
      );
    }
    // Vector searches of one store while another store's upload is written: the writer thread that
    // writes it also proposes every search's candidates (services/datastore/writer-thread.ts). A
    // search every 20 ms, REST with a base64 query, idle first (the baseline), then during an upload.
    {
      const busyN = Math.min(vn, 30_000);
      const busyQuery = () => {
        const q = around(new Float32Array(dim));
        return JSON.stringify({ mode: "vector", vector: Buffer.from(q.buffer).toString("base64"), limit: 10 });
      };
      const searchEvery = async (times: number[], until: () => boolean) => {
        while (!until()) {
          const body = busyQuery();
          const t0 = performance.now();
          const r = await caller.post("/v1/datastores/vector/search", body);
          times.push(performance.now() - t0);
          if (r.status !== 200) throw new Error(`REST vector search failed: ${r.body}`);
          await sleep(20);
        }
      };
      await checkpointed(serverDb);
      const idleSearches: number[] = [];
      await searchEvery(idleSearches, () => idleSearches.length >= 200);
      const idle = summary(idleSearches);
      /** searchedDuring times the searches made while `write` runs, against the idle ones; `note` says what it was, given how long it took. */
      const searchedDuring = async (label: string, write: () => Promise<unknown>, note = (took: number) => `it took ${fmt(took)} ms`) => {
        await checkpointed(serverDb);
        const times: number[] = [];
        let done = false;
        const searches = searchEvery(times, () => done);
        const t1 = performance.now();
        await write().finally(() => {
          done = true;
        });
        const took = performance.now() - t1;
        await searches;
        const during = summary(times);
        report(
          `vector p50/p99 @ ${vn}, REST, during ${label}`,
          `${fmt(during.p50)} / ${fmt(during.p99)} ms (max ${fmt(Math.max(...times))})`,
          `${fmt(idle.p50)} / ${fmt(idle.p99)} ms idle`,
          during.p99 / idle.p99,
          `(p99 ratio; ${times.length} searches; ${note(took)})`,
        );
      };
      await caller.post("/v1/datastores", JSON.stringify({ name: "vector-busy" }));
      // The body is made first: this process is the server's, and making it would hold the searches.
      const busyBody = [...ndjson(busyN, packedLine)];
      await searchedDuring(
        "an upload",
        async () => {
          const r = await upload(server.url, server.apiKey, "vector-busy", busyBody);
          if (r.status !== 200) throw new Error(`REST vector ingest failed: ${r.status} ${r.body.slice(0, 300)}`);
        },
        (took) => `while ${busyN} x ${dim} went into another store at ${Math.round(busyN / (took / 1000))} rec/s`,
      );
      // Then while that store loses most of its records in one RPC DeleteRecords, and while it is dropped.
      const deleted = Math.floor((busyN * 2) / 3);
      await searchedDuring(`a delete of ${deleted} ids from another store of ${busyN}`, async () => {
        const ids = Array.from({ length: deleted }, (_, i) => `v${i}`);
        const resp = await rpc.deleteRecords({ store: "vector-busy", ids }, { headers: rpcHeaders });
        if (resp.deleted !== deleted) throw new Error(`deleted ${resp.deleted} of ${deleted}`);
      });
      await searchedDuring(`the drop of that store (${busyN - deleted} records)`, async () => {
        const r = await dropServerStore("vector-busy");
        if (!r.ok) throw new Error(`drop failed: ${r.status}`);
      });
    }
    if (vectorN > vn) {
      // The body made as it is sent (900,000 records at 1M would not be held).
      const moreRate = await restIngest(
        "vector",
        vectorN - vn,
        ndjson(vectorN - vn, (j) => packedLine(vn + j)),
      );
      const packedRate = median(ingest.map((x) => x.packed));
      report(
        `ingest ${vectorN - vn} x ${dim} more, REST NDJSON, base64 (into a store of ${vn})`,
        `${Math.round(moreRate)} rec/s`,
        `${Math.round(packedRate)} rec/s for the first ${vn} as base64`,
        moreRate / packedRate,
      );
    }
    // The writer thread saves the index a few seconds after the upload; the store layer loads that
    // file once it holds the store's last write (its generation): an index saved between uploads is
    // stale, and loading it the store layer would build an index of its own.
    const server2 = await openSqliteEngine(serverDb, { rebuild: "sync" });
    const owner = new Database(serverDb, { readonly: true });
    const { id: vectorId } = owner.prepare("SELECT id FROM stores WHERE name = 'vector'").get() as { id: number };
    const { generation } = owner.prepare("SELECT generation FROM ds_ann WHERE store_id = ?").get(vectorId) as { generation: number };
    owner.close();
    const row = server2.storeById(vectorId)!;
    const savedGeneration = () => {
      try {
        return (JSON.parse(readFileSync(`${annPath(serverDb, row.id)}.json`, "utf8")) as { generation: number }).generation;
      } catch {
        return -1;
      }
    };
    const until = Date.now() + 600_000;
    while (savedGeneration() !== generation && Date.now() < until) await sleep(200);
    if (savedGeneration() !== generation) throw new Error("the server's writer thread did not save the vector store's index");
    await checkpointed(serverDb);
    const annTimes: number[] = [];
    const exactTimes: number[] = [];
    const restTimes: number[] = [];
    const restBase64Times: number[] = [];
    const rpcTimes: number[] = [];
    const connectEsTimes: number[] = [];
    // Each path is timed in a pass of its own, on queries of its own drawn from the same
    // distribution: the true top 10, computed here from the same vectors, reads all of them (1.5 GB
    // at 1M x 384) for every query, and the store's exact search (timed on every fifth query) takes
    // seconds; timed between them, a search found the caches cold (REST 6.8 ms p50 at 1M in such a
    // run, 3.4 ms in a server alone, exp). And a query searched before by another path finds its
    // graph nodes and rows cached: RPC, timed after REST on the same queries, came out faster than
    // REST (exp, 200,000 vectors: REST 1.6 ms on queries seen before, 2.8 ms on fresh ones).
    let agree = 0;
    let filteredFull = 0;
    const vq = Math.max(10, Math.floor(queries / 2));
    const fresh = (n: number) => Array.from({ length: n }, () => around(new Float32Array(dim)));
    const vqueries = fresh(vq);
    server2.vectorSearch(row, vqueries[0], [], 10);
    const got = vqueries.map((query, q) => {
      t = performance.now();
      const hits = server2.vectorSearch(row, query, [], 10);
      annTimes.push(performance.now() - t);
      if (q % 10 === 0) {
        const f = server2.vectorSearch(row, query, [{ path: ["even"], op: "eq", value: true }], 10);
        if (f.length === 10 && f.every((h) => JSON.parse(h.metadata).even === true)) filteredFull++;
      }
      return hits;
    });
    // Ten unmeasured searches first on each path, then vq measured; REST's bodies are made
    // beforehand, as a load generator's are.
    const warm = 10;
    const restBodies = fresh(warm + vq).map((query) => JSON.stringify({ mode: "vector", vector: Array.from(query), limit: 10 }));
    // The same searches with the query as the base64 of its float32s, as a client holding OpenAI's
    // `encoding_format: "base64"` embedding sends it.
    const restBase64Bodies = fresh(warm + vq).map((query) =>
      JSON.stringify({
        mode: "vector",
        vector: Buffer.from(query.buffer, query.byteOffset, query.byteLength).toString("base64"),
        limit: 10,
      }),
    );
    const rpcBodies = fresh(warm + vq).map((query) =>
      searchBytes({ store: "vector", vector: Array.from(query), mode: SearchMode.VECTOR, limit: 10 }),
    );
    const rpcVectors = fresh(warm + vq).map((query) => Array.from(query));
    await passes(["rest", "rpc", "rest-base64", "connect-es"] as const, warm + vq, async (path, q) => {
      const t0 = performance.now();
      if (path === "rest" || path === "rest-base64") {
        const r = await caller.post("/v1/datastores/vector/search", (path === "rest" ? restBodies : restBase64Bodies)[q]);
        if (q >= warm) (path === "rest" ? restTimes : restBase64Times).push(performance.now() - t0);
        if (r.status !== 200) throw new Error(`REST vector search failed: ${r.body}`);
      } else if (path === "rpc") {
        const r = await rpcCaller.post(searchPath, rpcBodies[q]);
        if (q >= warm) rpcTimes.push(performance.now() - t0);
        if (r.status !== 200) throw new Error(`RPC vector search failed: ${r.body}`);
      } else {
        await rpc.search({ store: "vector", vector: rpcVectors[q], mode: SearchMode.VECTOR, limit: 10 }, { headers: rpcHeaders });
        if (q >= warm) connectEsTimes.push(performance.now() - t0);
      }
    });
    for (const [q, query] of vqueries.entries()) {
      if (q % 5 === 0) {
        t = performance.now();
        server2.exactSearch(row, query, [], 10);
        exactTimes.push(performance.now() - t);
      }
      const want = exactTop(all, dim, query, 10);
      agree += got[q].filter((h) => want.has(h.id)).length / want.size;
    }
    const recall = agree / vq;
    const [a, e, rr, rp, rc] = [summary(annTimes), summary(exactTimes), summary(restTimes), summary(rpcTimes), summary(connectEsTimes)];
    report(
      `vector ANN p50/p99 @ ${vectorN} x ${dim}, store`,
      `${fmt(a.p50)} / ${fmt(a.p99)} ms`,
      `exact ${fmt(e.p50)} / ${fmt(e.p99)} ms`,
      e.p50 / a.p50,
      `recall@10 ${recall.toFixed(3)} over ${vq} queries ${recall >= 0.95 ? "(target >= 0.95: met)" : "(target >= 0.95: MISSED)"}; filtered searches with 10 hits ${filteredFull}/${Math.ceil(vq / 10)}`,
    );
    // The store's search in its two parts, on fresh queries: the index's candidates, and their
    // exact re-rank from the records' float32 vectors (64 rows read by rowid).
    const candidateTimes: number[] = [];
    const rerankTimes: number[] = [];
    const readBefore = diskReadBytes();
    for (const query of fresh(vq)) {
      t = performance.now();
      const keys = server2.annSearch(row, query, annK(10, false))!;
      candidateTimes.push(performance.now() - t);
      t = performance.now();
      server2.rerank(row, keys, query, [], 10);
      rerankTimes.push(performance.now() - t);
    }
    const [cs, rs] = [summary(candidateTimes), summary(rerankTimes)];
    report(
      `vector ANN p50/p99 @ ${vectorN} x ${dim}, store's parts`,
      `${fmt(cs.p50)} / ${fmt(cs.p99)} ms candidates`,
      `re-rank ${fmt(rs.p50)} / ${fmt(rs.p99)} ms`,
      cs.p50 / rs.p50,
      `(the index's ${annK(10, false)} candidates, then their rows read and scored exactly; ${fmt((diskReadBytes() - readBefore) / vq / 1024)} KiB a search read from disk)`,
    );
    report(
      `vector ANN p50/p99 @ ${vectorN} x ${dim}, REST`,
      `${fmt(rr.p50)} / ${fmt(rr.p99)} ms`,
      `store ${fmt(a.p50)} ms`,
      rr.p50 / a.p50,
      `adds ${fmt(rr.p50 - a.p50)} ms ${rr.p50 <= 5 ? "(target p50 <= 5 ms: met)" : "(target p50 <= 5 ms: MISSED)"}`,
    );
    const r64 = summary(restBase64Times);
    report(
      `vector ANN p50/p99 @ ${vectorN} x ${dim}, REST, query as base64`,
      `${fmt(r64.p50)} / ${fmt(r64.p99)} ms`,
      `store ${fmt(a.p50)} ms`,
      r64.p50 / a.p50,
      `adds ${fmt(r64.p50 - a.p50)} ms ${r64.p50 <= 5 ? "(target p50 <= 5 ms: met)" : "(target p50 <= 5 ms: MISSED)"}`,
    );
    report(
      `vector ANN p50/p99 @ ${vectorN} x ${dim}, RPC`,
      `${fmt(rp.p50)} / ${fmt(rp.p99)} ms`,
      `store ${fmt(a.p50)} ms`,
      rp.p50 / a.p50,
      `adds ${fmt(rp.p50 - a.p50)} ms (Connect protocol from node:http) ${rp.p50 <= 5 ? "(target p50 <= 5 ms: met)" : "(target p50 <= 5 ms: MISSED)"}`,
    );
    report(
      `vector ANN p50/p99 @ ${vectorN} x ${dim}, RPC from Connect-ES`,
      `${fmt(rc.p50)} / ${fmt(rc.p99)} ms`,
      `store ${fmt(a.p50)} ms`,
      rc.p50 / a.p50,
      `adds ${fmt(rc.p50 - a.p50)} ms (the client's own CPU in this process included)`,
    );
    await server2.close();

    await benchPostgres({ texts, terms, vectors: all, around, sqlite: store, sqliteRate: rate, sqliteKeyword });
  } finally {
    caller.close();
    rpcCaller.close();
    await store.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What the PostgreSQL figures are measured on, and SQLite's figures they stand beside. */
interface PostgresBench {
  texts: string[];
  terms: Record<string, (q: number) => string>;
  vectors: Float32Array;
  around(out: Float32Array): Float32Array;
  sqlite: SqliteEngine;
  sqliteRate: number;
  sqliteKeyword: Record<string, ReturnType<typeof summary>>;
}

/** benchPostgres measures the store layer on a fresh PostgreSQL database, dropped after. */
async function benchPostgres(b: PostgresBench): Promise<void> {
  let database: FreshDatabase;
  try {
    database = await createDatabase(pgServer, "shaker_bench");
  } catch (e) {
    process.stdout.write(`  (PostgreSQL figures skipped: ${(e as Error).message})\n`);
    return;
  }
  const store = await createDatastoreStore(database.url);
  try {
    const kw = (await store.createStore("bench", "keyword", ""))!;
    const tiny = new Float32Array([1, 0, 0, 0]);
    let t = performance.now();
    for (let i = 0; i < pgN; i += batch) {
      const part: RecordInput[] = [];
      for (let j = i; j < Math.min(pgN, i + batch); j++)
        part.push({ id: `k${j}`, text: b.texts[j], metadata: `{"n":${j % 100}}`, vector: tiny });
      if (!(await store.upsert(kw.id, part)).ok) throw new Error("PostgreSQL keyword ingest refused");
    }
    const rate = pgN / ((performance.now() - t) / 1000);
    report(
      `ingest ${pgN}, PostgreSQL store layer (tsvector + GIN)`,
      `${Math.round(rate)} rec/s`,
      `${Math.round(b.sqliteRate)} rec/s SQLite`,
      rate / b.sqliteRate,
    );
    for (const [kind, term] of Object.entries(b.terms)) {
      const times: number[] = [];
      for (let q = 0; q < queries; q++) {
        t = performance.now();
        const hits = await store.keywordSearch(kw, term(q), [], 10);
        times.push(performance.now() - t);
        if (hits.length === 0) throw new Error(`PostgreSQL keyword search for ${term(q)} found nothing`);
      }
      const [p, s] = [summary(times), b.sqliteKeyword[kind]];
      report(
        `keyword p50/p99 @ ${pgN} (${kind}), PostgreSQL store`,
        `${fmt(p.p50)} / ${fmt(p.p99)} ms`,
        `SQLite @ ${keywordN} ${fmt(s.p50)} / ${fmt(s.p99)} ms`,
        p.p50 / s.p50,
      );
    }
    // Vector: the same records in both, PostgreSQL's exact scan (no pgvector) beside SQLite's.
    const pgVs = (await store.createStore("bench", "vector", ""))!;
    const liteVs = b.sqlite.createStore("bench", "vector-pg", "")!;
    const ingestMs = { pg: 0, lite: 0 };
    for (let i = 0; i < pgVectorN; i += batch) {
      const part: RecordInput[] = [];
      for (let j = i; j < Math.min(pgVectorN, i + batch); j++)
        part.push({ id: `v${j}`, text: "", metadata: "{}", vector: b.vectors.subarray(j * dim, (j + 1) * dim) });
      t = performance.now();
      if (!(await store.upsert(pgVs.id, part)).ok) throw new Error("vector ingest refused");
      ingestMs.pg += performance.now() - t;
      t = performance.now();
      if (!b.sqlite.upsert(liteVs.id, part).ok) throw new Error("vector ingest refused");
      ingestMs.lite += performance.now() - t;
    }
    report(
      `ingest ${pgVectorN} x ${dim}, PostgreSQL store layer`,
      `${Math.round(pgVectorN / (ingestMs.pg / 1000))} rec/s`,
      `${Math.round(pgVectorN / (ingestMs.lite / 1000))} rec/s SQLite`,
      ingestMs.lite / ingestMs.pg,
    );
    const [pgRow, liteRow] = [(await store.store("bench", "vector"))!, b.sqlite.storeById(liteVs.id)!];
    const [pgTimes, liteTimes]: number[][] = [[], []];
    let agree = 0;
    const vq = Math.max(10, Math.floor(queries / 10));
    for (let q = 0; q < vq; q++) {
      const query = b.around(new Float32Array(dim));
      t = performance.now();
      const got = await store.vectorSearch(pgRow, query, [], 10);
      pgTimes.push(performance.now() - t);
      t = performance.now();
      const want = b.sqlite.exactSearch(liteRow, query, [], 10);
      liteTimes.push(performance.now() - t);
      const ids = new Set(got.map((h) => h.id));
      agree += want.filter((w) => ids.has(w.id)).length / want.length;
    }
    const [p, s] = [summary(pgTimes), summary(liteTimes)];
    report(
      `vector p50/p99 @ ${pgVectorN} x ${dim}, PostgreSQL ${store.vectorEngine}`,
      `${fmt(p.p50)} / ${fmt(p.p99)} ms`,
      `SQLite exact ${fmt(s.p50)} / ${fmt(s.p99)} ms`,
      p.p50 / s.p50,
      `same top 10 as SQLite's exact scan: ${((agree / vq) * 100).toFixed(1)}%`,
    );
  } finally {
    await store.close();
    await database.drop();
  }
}
