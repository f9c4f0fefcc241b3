// The Datastore's ANN index (services/datastore/ann.ts) at the store layer, forced on for small
// stores (annFrom: 1): its results against an exact scan, filters, deletes, a removed index file;
// then the REST upload's effect on the event loop, and the CLI's load progress.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MessageChannel } from "node:worker_threads";
import Database from "better-sqlite3";
import * as sqliteVec from "sqlite-vec";
import { afterAll, describe, expect, it } from "vitest";
import { Progress } from "../cli/datastores.js";
import type { CliIo } from "../cli/io.js";
import { annPath, keyOf, newGraph, rowidOf } from "../services/datastore/ann.js";
import type { RecordInput, StoreRow } from "../services/datastore/model.js";
import { buffersOf, checkEmbeddings, type RecordPack, readNdjson } from "../services/datastore/record-pack.js";
import { mmapBytesDefault, openSqliteEngine } from "../services/datastore/sqlite-engine.js";
import { type Writer, type WriterThreadOptions, writerNice, writerThread } from "../services/datastore/writer.js";
import { testDialect } from "./databases.js";
import { startTestServer, trueTop, waitFor } from "./helpers.js";

const dim = 32;
let seed = 11;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
const vec = () => Float32Array.from({ length: dim }, rand);
const records = (n: number, from = 0): RecordInput[] =>
  Array.from({ length: n }, (_, i) => ({
    id: `r${from + i}`,
    text: `record ${from + i}`,
    metadata: JSON.stringify({ m: (from + i) % 7 }),
    vector: vec(),
  }));

const dirs: string[] = [];
function tempFile(): string {
  const dir = mkdtempSync(join(tmpdir(), "shaker-ann-"));
  dirs.push(dir);
  return join(dir, "datastore.db");
}

/** withWriter runs fn with a writer thread on a new database file, and closes the thread after. */
async function withWriter<T>(options: WriterThreadOptions, fn: (writer: Writer, file: string) => Promise<T>): Promise<T> {
  const file = tempFile();
  const writer = await writerThread(file, options);
  try {
    return await fn(writer, file);
  } finally {
    await writer.close();
  }
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// The ANN index is SQLite's (usearch files beside the database): PostgreSQL has pgvector's instead.
describe.skipIf(testDialect === "postgresql")("datastore ANN index", () => {
  it("returns the exact results on a small store where the index is forced on (recall)", async () => {
    const store = await openSqliteEngine(":memory:", { annFrom: 1 });
    const row0 = store.createStore("a", "s", "")!;
    expect(store.upsert(row0.id, records(2000)).ok).toBe(true);
    const row = store.storeById(row0.id)!;
    expect(store.annSearch(row, vec(), 10)).toBeDefined();
    let agree = 0;
    for (let q = 0; q < 20; q++) {
      const query = vec();
      const got = store.vectorSearch(row, query, [], 10);
      const want = store.exactSearch(row, query, [], 10);
      const ids = new Set(got.map((h) => h.id));
      agree += want.filter((w) => ids.has(w.id)).length;
      // Scores are exact (re-ranked from the float32 vectors), so a shared hit scores the same.
      for (const h of got) {
        const w = want.find((x) => x.id === h.id);
        if (w) expect(h.score).toBeCloseTo(w.score, 5);
      }
    }
    expect(agree / 200).toBeGreaterThanOrEqual(0.95);
    await store.close();
  });

  it("maps its file for reads (the re-rank's rows), unless told not to", async () => {
    const file = tempFile();
    const mapped = await openSqliteEngine(file);
    expect(mapped.db.sqlite!.pragma("mmap_size", { simple: true })).toBe(mmapBytesDefault);
    await mapped.close();
    const unmapped = await openSqliteEngine(file, { mmapBytes: 0 });
    expect(unmapped.db.sqlite!.pragma("mmap_size", { simple: true })).toBe(0);
    await unmapped.close();
  });

  it("compacts a graph that updates filled with removed nodes, keeping it current through writes made meanwhile", async () => {
    const file = tempFile();
    let store = await openSqliteEngine(file, { annFrom: 1, rebuild: "steps" });
    const { id } = store.createStore("a", "s", "")!;
    const current = new Map(records(2000).map((r) => [r.id, r]));
    const write = (rs: RecordInput[]) => {
      expect(store.upsert(id, rs).ok).toBe(true);
      for (const r of rs) current.set(r.id, r);
    };
    write([...current.values()]);
    expect(store.annStats(id)).toEqual({ size: 2000, removed: 0, compacting: false });
    expect(store.annPending()).toEqual([]);
    // Each update of a record replaces its vector: the graph keeps the old node.
    write(records(400));
    expect(store.annStats(id)).toMatchObject({ size: 2000, removed: 400 });
    expect(store.annPending()).toEqual([]);
    write(records(600));
    expect(store.annStats(id)).toMatchObject({ size: 2000, removed: 1000 });
    expect(store.annPending()).toEqual([id]);

    // A compaction part way (500 of 2,000 records read), then writes on both sides of its cursor:
    // updates, new records, a delete; the old graph answers searches meanwhile.
    expect(store.rebuildStep(id, 500)).toBe(false);
    expect(store.annStats(id)).toMatchObject({ compacting: true });
    const row = store.storeById(id)!;
    write([{ ...current.get("r10")!, vector: vec() }, { ...current.get("r1500")!, vector: vec() }, ...records(50, 5000)]);
    expect(store.deleteRecords(row, ["r20", "r1600"])).toBe(2);
    current.delete("r20");
    current.delete("r1600");
    expect(store.vectorSearch(row, current.get("r10")!.vector, [], 1)[0].id).toBe("r10");
    while (!store.rebuildStep(id, 500));
    // Two nodes removed in the new graph: r10's update and r20's delete came after it had read them.
    expect(store.annStats(id)).toEqual({ size: current.size, removed: 2, compacting: false });
    expect(store.annPending()).toEqual([]);

    // The new graph holds every record's current vector (its size above: none of the deleted ones).
    for (const rid of ["r10", "r1500", "r5020", "r0", "r1999"]) {
      expect(store.vectorSearch(row, current.get(rid)!.vector, [], 1)[0].id).toBe(rid);
    }
    // It is saved as any index is, with its count of removed nodes, and loaded again as it is.
    store.saveIndexes();
    await store.close();
    store = await openSqliteEngine(file, { annFrom: 1, rebuild: "steps" });
    store.openIndexes();
    expect(store.annPending()).toEqual([]);
    expect(store.annStats(id)).toEqual({ size: current.size, removed: 2, compacting: false });
    await store.close();
  });

  it.skipIf(process.platform !== "linux")(
    "runs the writer thread niced, and only it: bulk writes yield the CPU to the event loop",
    async () => {
      // A thread listed may have ended before its stat is read (libuv's and V8's come and go): skipped.
      const niceOf = () =>
        readdirSync("/proc/self/task").flatMap((tid) => {
          let stat: string;
          try {
            stat = readFileSync(`/proc/self/task/${tid}/stat`, "utf8");
          } catch {
            return [];
          }
          return [{ tid: Number(tid), nice: Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]) }];
        });
      const before = new Set(niceOf().map((t) => t.tid));
      await withWriter({}, async () => {
        expect(writerNice).toBeGreaterThan(0);
        const added = niceOf().filter((t) => !before.has(t.tid));
        expect(added.some((t) => t.nice === writerNice)).toBe(true);
        expect(niceOf().find((t) => t.tid === process.pid)?.nice).toBe(0);
      });
    },
  );

  it("compacts in the writer thread, between its other work, once updates have filled the graph", async () => {
    await withWriter({ annFrom: 1, saveAfterMs: 20 }, async (writer, file) => {
      const row = (await writer.createStore("a", "s", ""))!;
      expect((await writer.upsert(row.id, records(2000))).ok).toBe(true);
      const updated = records(1200);
      expect((await writer.upsert(row.id, updated)).ok).toBe(true);
      const meta = () => {
        try {
          return JSON.parse(readFileSync(`${annPath(file, row.id)}.json`, "utf8")) as { removed: number };
        } catch {
          return undefined;
        }
      };
      // The thread saves the compacted graph a moment after it is done: nothing removed in it.
      await waitFor(() => meta()?.removed === 0, "the compacted index saved");
      // It holds the records' current vectors (rowid i + 1 is record r<i>).
      for (const i of [0, 600, 1199]) {
        const keys = await writer.annSearch({ ...row, dimension: dim }, updated[i].vector, 1);
        expect(keys?.[0]).toBe(BigInt(i + 1));
      }
    });
  });

  it("answers vector searches while it writes a large part, between slices of it", async () => {
    await withWriter({ annFrom: 1 }, async (writer, file) => {
      const a = (await writer.createStore("acct-a", "a", ""))!;
      const b = (await writer.createStore("acct-b", "b", ""))!;
      const aRecords = records(300);
      expect((await writer.upsert(a.id, aRecords)).ok).toBe(true);
      // Another account's upload: one part of 3,000 records, then a search of the first store.
      await writer.beginUpload(b.id);
      const order: string[] = [];
      const part = writer.uploadPart(records(3000)).then((r) => {
        order.push("part");
        return r;
      });
      const search = writer.annSearch({ ...a, dimension: dim }, aRecords[7].vector, 1).then((keys) => {
        order.push("search");
        return keys;
      });
      expect((await search)?.[0]).toBe(8n);
      expect(await part).toEqual({ ok: true, upserted: 3000 });
      expect(order).toEqual(["search", "part"]);
      expect(await writer.commitUpload()).toEqual({ ok: true, upserted: 3000 });
      const reader = await openSqliteEngine(file, { ann: false });
      expect([reader.count(a.id), reader.count(b.id)]).toEqual([300, 3000]);
      await reader.close();
    });
  });

  it("saves an index once vector searches pause, or once they have held the save long enough", async () => {
    const searching = async (writer: Writer, row: StoreRow, until: () => boolean) => {
      while (!until()) {
        await writer.annSearch({ ...row, dimension: dim }, vec(), 1);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    // Searches every 50 ms hold the save; once they stop, it comes.
    await withWriter({ annFrom: 1, saveAfterMs: 20, saveDeferMs: 60_000 }, async (writer, file) => {
      const row = (await writer.createStore("a", "s", ""))!;
      await writer.upsert(row.id, records(300));
      const saved = () => existsSync(`${annPath(file, row.id)}.json`);
      const started = Date.now();
      await searching(writer, row, () => Date.now() - started > 1500);
      expect(saved()).toBe(false);
      await waitFor(saved, "the index saved once searches stopped");
    });
    // Searches that never pause hold it no longer than saveDeferMs.
    await withWriter({ annFrom: 1, saveAfterMs: 20, saveDeferMs: 300 }, async (writer, file) => {
      const row = (await writer.createStore("a", "s", ""))!;
      await writer.upsert(row.id, records(300));
      const saved = () => existsSync(`${annPath(file, row.id)}.json`);
      const started = Date.now();
      await searching(writer, row, () => saved() || Date.now() - started > 15_000);
      expect(saved()).toBe(true);
    });
  });

  it("writes a large upsert in slices, all or nothing: a bad record late in it writes none", async () => {
    await withWriter({ annFrom: 1 }, async (writer, file) => {
      const row = (await writer.createStore("a", "s", ""))!;
      expect(await writer.upsert(row.id, records(10))).toEqual({ ok: true, upserted: 10 });
      const bad = records(3000, 10);
      bad[2500] = { ...bad[2500], vector: new Float32Array(dim + 1) };
      expect(await writer.upsert(row.id, bad)).toEqual({ ok: false, index: 2500, got: dim + 1, want: dim });
      const reader = await openSqliteEngine(file, { ann: false });
      expect(reader.count(row.id)).toBe(10);
      // Nor is any of them left in the index: each record's own vector finds itself, or an older one.
      const keys = await writer.annSearch({ ...row, dimension: dim }, bad[100].vector, 1);
      expect(Number(keys?.[0])).toBeLessThanOrEqual(10);
      expect(await writer.upsert(row.id, records(3000, 10))).toEqual({ ok: true, upserted: 3000 });
      expect(reader.count(row.id)).toBe(3010);
      await reader.close();
    });
  });

  it("leaves an upload's WAL to the checkpointer: its commit keeps the connection's checkpoint backstop as it was", async () => {
    const store = await openSqliteEngine(tempFile(), { annFrom: 1 });
    const sqlite = store.db.sqlite!;
    const backstop = sqlite.pragma("wal_autocheckpoint", { simple: true });
    expect(backstop).toBeGreaterThan(0);
    const { id } = store.createStore("a", "s", "")!;
    store.beginUpload(id);
    store.uploadPart(records(100));
    expect(store.commitUpload()).toEqual({ ok: true, upserted: 100 });
    expect(sqlite.pragma("wal_autocheckpoint", { simple: true })).toBe(backstop);
    expect(store.count(id)).toBe(100);
    await store.close();
  });

  it("returns limit results under a selective filter, and never a deleted record", async () => {
    const store = await openSqliteEngine(":memory:", { annFrom: 1 });
    const { id } = store.createStore("a", "s", "")!;
    const input = records(3000);
    store.upsert(id, input);
    const row = store.storeById(id)!;
    // m == 3 holds for 1 record in 7, most of them far from the query.
    const hits = store.vectorSearch(row, vec(), [{ path: ["m"], op: "eq", value: 3 }], 50);
    expect(hits).toHaveLength(50);
    expect(hits.every((h) => JSON.parse(h.metadata).m === 3)).toBe(true);
    // The nearest record to its own vector is itself; once deleted it is never returned.
    const target = input[1234];
    expect(store.vectorSearch(row, target.vector, [], 5)[0].id).toBe(target.id);
    expect(store.deleteRecords(row, [target.id])).toBe(1);
    const after = store.vectorSearch(row, target.vector, [], 100);
    expect(after).toHaveLength(100);
    expect(after.map((h) => h.id)).not.toContain(target.id);
    // An update moves a record: searched by its new vector it comes first.
    const moved = { ...input[99], vector: vec() };
    store.upsert(id, [moved]);
    expect(store.vectorSearch(row, moved.vector, [], 1)[0].id).toBe(moved.id);
    await store.close();
  });

  it("indexes an upload into a new store as it is written, with nothing left to rebuild (each vector added once)", async () => {
    // Indexed as it was written and then again by a rebuild, every vector was removed and re-added:
    // the graph kept the removed nodes, and searches that walked them found fewer true neighbours.
    const store = await openSqliteEngine(tempFile(), { annFrom: 1, rebuild: "steps" });
    const { id } = store.createStore("a", "s", "")!;
    store.beginUpload(id);
    expect(store.uploadPart(records(500)).ok).toBe(true);
    expect(store.uploadPart(records(500, 500)).ok).toBe(true);
    expect(store.commitUpload().ok).toBe(true);
    expect(store.annPending()).toEqual([]);
    const row = store.storeById(id)!;
    // Searchable by the index at once (no rebuild first), and it finds the exact top 10.
    expect(store.annSearch(row, vec(), 10)).toHaveLength(10);
    let agree = 0;
    for (let q = 0; q < 20; q++) {
      const query = vec();
      const ids = new Set(store.vectorSearch(row, query, [], 10).map((h) => h.id));
      agree += store.exactSearch(row, query, [], 10).filter((w) => ids.has(w.id)).length;
    }
    expect(agree / 200).toBeGreaterThanOrEqual(0.95);
    await store.close();
  });

  it("saves the index next to the database and rebuilds it when the file is removed or stale", async () => {
    const file = tempFile();
    let store = await openSqliteEngine(file, { annFrom: 1 });
    const { id } = store.createStore("a", "s", "")!;
    const input = records(1500);
    store.upsert(id, input);
    let row = store.storeById(id)!;
    const before = store.vectorSearch(row, input[7].vector, [], 10).map((h) => h.id);
    await store.close();
    expect(existsSync(annPath(file, id))).toBe(true);
    expect(existsSync(`${annPath(file, id)}.json`)).toBe(true);

    rmSync(annPath(file, id));
    store = await openSqliteEngine(file, { annFrom: 1 });
    row = store.storeById(id)!;
    // The rebuilt graph is another approximate graph (usearch adds in parallel, in no fixed order): it
    // finds the record itself first and nearly the same top 10 (a CI run found 9 of them).
    const rebuilt = store.vectorSearch(row, input[7].vector, [], 10).map((h) => h.id);
    expect(rebuilt[0]).toBe("r7");
    expect(rebuilt.filter((id) => before.includes(id)).length).toBeGreaterThanOrEqual(8);
    // A delete through another connection (the index file is now of an older generation).
    await store.close();
    const other = await openSqliteEngine(file, { ann: false });
    other.deleteRecords(other.storeById(id)!, [input[7].id]);
    await other.close();
    store = await openSqliteEngine(file, { annFrom: 1 });
    row = store.storeById(id)!;
    expect(store.vectorSearch(row, input[7].vector, [], 10).map((h) => h.id)).not.toContain(input[7].id);
    await store.close();
  });

  it("keys its graph by the rowids mixed, and serves an index keyed by the rowids themselves until a compaction replaces it", async () => {
    for (const rowid of [0n, 1n, 2n, 12_345n, 2n ** 53n - 1n]) {
      expect(rowidOf(keyOf(rowid))).toBe(rowid);
      expect(keyOf(rowid)).not.toBe(2n ** 64n - 1n);
    }
    // usearch finds a key in a table of 2^n slots at its low n bits, probing on to the next free
    // slot: consecutive rowids' keys leave no long run of taken slots (the rowids themselves, one).
    const longestRun = (keys: bigint[], slots: number) => {
      const taken = new Uint8Array(slots);
      for (const k of keys) taken[Number(k % BigInt(slots))] = 1;
      let longest = 0;
      for (let i = 0, run = 0; i < slots; i++) longest = Math.max(longest, (run = taken[i] ? run + 1 : 0));
      return longest;
    };
    const rowids = Array.from({ length: 3000 }, (_, i) => BigInt(i + 1));
    expect(longestRun(rowids, 4096)).toBe(3000);
    expect(longestRun(rowids.map(keyOf), 4096)).toBeLessThan(16);
    const file = tempFile();
    let store = await openSqliteEngine(file, { annFrom: 1 });
    const { id } = store.createStore("a", "s", "")!;
    const input = records(1500);
    store.upsert(id, input);
    await store.close();
    const metaFile = `${annPath(file, id)}.json`;
    const meta = JSON.parse(readFileSync(metaFile, "utf8"));
    expect(meta.keys).toBe("mixed");
    // An older Shaker's index: the same records, keyed by their rowids (record r<i> is rowid i + 1).
    const old = newGraph(dim);
    old.add(
      BigUint64Array.from(input, (_, i) => BigInt(i + 1)),
      Float32Array.from(input.flatMap((r) => [...r.vector])),
      0,
    );
    old.save(annPath(file, id));
    writeFileSync(metaFile, JSON.stringify({ ...meta, keys: undefined }));
    store = await openSqliteEngine(file, { annFrom: 1, rebuild: "steps" });
    store.openIndexes();
    let row = store.storeById(id)!;
    // It serves searches as it is, and deletes from it, while a compaction is due.
    expect(store.annPending()).toEqual([id]);
    expect(store.annSearch(row, input[7].vector, 1)?.[0]).toBe(8n);
    expect(store.deleteRecords(row, [input[8].id])).toBe(1);
    expect(store.vectorSearch(row, input[8].vector, [], 20).map((h) => h.id)).not.toContain(input[8].id);
    while (!store.rebuildStep(id, 400));
    expect(store.annPending()).toEqual([]);
    expect(store.annSearch(row, input[7].vector, 1)?.[0]).toBe(8n);
    expect(store.vectorSearch(row, input[1000].vector, [], 1)[0].id).toBe(input[1000].id);
    await store.close();
    expect(JSON.parse(readFileSync(metaFile, "utf8")).keys).toBe("mixed");
    store = await openSqliteEngine(file, { annFrom: 1, rebuild: "steps" });
    store.openIndexes();
    row = store.storeById(id)!;
    expect(store.annPending()).toEqual([]);
    expect(store.annSearch(row, input[1000].vector, 1)?.[0]).toBe(1001n);
    await store.close();
  });

  it("deletes many ids and drops a large store in slices, answering vector searches between them, all or nothing", async () => {
    await withWriter({ annFrom: 1 }, async (writer, file) => {
      const a = (await writer.createStore("acct-a", "a", ""))!;
      const b = (await writer.createStore("acct-b", "b", ""))!;
      const aRecords = records(300);
      const bRecords = records(4000);
      expect((await writer.upsert(a.id, aRecords)).ok).toBe(true);
      expect((await writer.upsert(b.id, bRecords)).ok).toBe(true);
      const B = { ...b, dimension: dim };
      const searchedDuring = async (write: Promise<unknown>) => {
        const order: string[] = [];
        const done = write.then((r) => {
          order.push("write");
          return r;
        });
        const keys = await writer.annSearch({ ...a, dimension: dim }, aRecords[7].vector, 1).then((k) => {
          order.push("search");
          return k;
        });
        expect(keys?.[0]).toBe(8n);
        const result = await done;
        expect(order).toEqual(["search", "write"]);
        return result;
      };
      // 3,000 ids (each twice, and some not there): 2,500 of them exist.
      const ids = [...bRecords.slice(1500).map((r) => r.id), "nope-1", "nope-2"];
      expect(await searchedDuring(writer.deleteRecords(B, [...ids, ...ids]))).toBe(2500);
      const reader = await openSqliteEngine(file, { ann: false });
      expect(reader.count(b.id)).toBe(1500);
      // Gone from the graph and the keyword index; the rest still found.
      const kept = await writer.annSearch(B, bRecords[20].vector, 1);
      expect(kept?.[0]).toBe(BigInt(300 + 21));
      const gone = await writer.annSearch(B, bRecords[3000].vector, 50);
      expect([...(gone ?? [])].every((k) => k <= BigInt(300 + 1500))).toBe(true);
      expect(reader.keywordSearch(reader.storeById(b.id)!, "record", [], 5000)).toHaveLength(1500);
      // The drop: in slices too, and then nothing of the store is left.
      expect(await searchedDuring(writer.dropStore(b.id))).toBe(true);
      expect(reader.storeById(b.id)).toBeUndefined();
      expect(reader.count(b.id)).toBe(0);
      expect(existsSync(annPath(file, b.id))).toBe(false);
      expect(await writer.dropStore(b.id)).toBe(false);
      // Its name is free again, and the other store is whole.
      expect(await writer.createStore("acct-b", "b", "")).toBeDefined();
      expect(reader.count(a.id)).toBe(300);
      await reader.close();
    });
  });

  it("puts the records of a delete rolled back into the graph again", async () => {
    const store = await openSqliteEngine(tempFile(), { annFrom: 1 });
    const { id } = store.createStore("a", "s", "")!;
    const input = records(500);
    store.upsert(id, input);
    const row = store.storeById(id)!;
    store.beginUpload(id);
    expect(
      store.deletePart(
        row,
        input.slice(0, 300).map((r) => r.id),
      ),
    ).toBe(300);
    expect(store.annSearch(row, input[7].vector, 1)?.[0]).not.toBe(8n);
    store.rollbackUpload();
    expect(store.count(id)).toBe(500);
    expect(store.annSearch(row, input[7].vector, 1)?.[0]).toBe(8n);
    expect(store.vectorSearch(row, input[250].vector, [], 1)[0].id).toBe(input[250].id);
    await store.close();
  });

  it("writes a pack the reader parked in it, whether it came before or after the part that takes it, embeddings filled in", async () => {
    await withWriter({}, async (writer, file) => {
      const { port1, port2 } = new MessageChannel();
      await writer.parking!.attach(port1);
      const row = (await writer.createStore("a", "parked", ""))!;
      const lines = (from: number, n: number, withoutVector = -1) =>
        Buffer.from(
          Array.from({ length: n }, (_, i) =>
            JSON.stringify(
              i === withoutVector ? { id: `p${from + i}`, text: "embedded" } : { id: `p${from + i}`, vector: Array.from(vec()) },
            ),
          ).join("\n"),
        );
      const read = (bytes: Buffer, first: number) => {
        const r = readNdjson(bytes, first, dim, 64);
        if (!("pack" in r)) throw new Error(r.error.message);
        return r;
      };
      /** park sends a pack to the writer as the reader thread does: its buffers moved. */
      const park = (key: number, pack: RecordPack) => port2.postMessage({ key, pack }, buffersOf(pack));
      const first = read(lines(0, 100, 7), 0);
      const second = read(lines(100, 50), 100);
      const dropped = read(lines(150, 10), 150);
      const embedded = Array.from(vec());
      await writer.exclusive(async () => {
        await writer.beginUpload(row.id);
        // Asked for before it arrives: the part waits for it.
        const waiting = writer.uploadPart({ parked: 1, fill: checkEmbeddings(first.missing, [embedded], dim, 0) });
        await new Promise((r) => setTimeout(r, 20));
        park(1, first.pack);
        expect((await waiting).ok).toBe(true);
        // Arrived before it is asked for.
        park(2, second.pack);
        await new Promise((r) => setTimeout(r, 20));
        expect((await writer.uploadPart({ parked: 2 })).ok).toBe(true);
        // A part its upload never wrote: let go, and never written.
        await writer.parking!.letGo([3]);
        park(3, dropped.pack);
        await writer.commitUpload();
      });
      port2.close();
      const reading = await openSqliteEngine(file);
      try {
        const stored = reading.storeById(row.id)!;
        expect(reading.count(row.id)).toBe(150);
        // The embedded vector is p7's: the nearest record to it, at a cosine of 1.
        const [nearest] = reading.exactSearch(stored, Float32Array.from(embedded), [], 1);
        expect(nearest.id).toBe("p7");
        expect(nearest.score).toBeCloseTo(1, 5);
      } finally {
        await reading.close();
      }
    });
  });

  it("rebuilds an index saved with another graph shape (an older Shaker's)", async () => {
    const file = tempFile();
    let store = await openSqliteEngine(file, { annFrom: 1 });
    const { id } = store.createStore("a", "s", "")!;
    store.upsert(id, records(300));
    await store.close();
    const metaFile = `${annPath(file, id)}.json`;
    const meta = JSON.parse(readFileSync(metaFile, "utf8"));
    expect(meta.connectivity).toBeGreaterThan(0);
    store = await openSqliteEngine(file, { annFrom: 1, rebuild: "steps" });
    store.openIndexes();
    expect(store.annPending()).toEqual([]);
    await store.close();
    writeFileSync(metaFile, JSON.stringify({ generation: meta.generation, dimension: meta.dimension }));
    store = await openSqliteEngine(file, { annFrom: 1, rebuild: "steps" });
    store.openIndexes();
    expect(store.annPending()).toEqual([id]);
    await store.close();
  });
});

// sqlite-vec's float KNN (dimensions under 64, or not a multiple of 8, below annFrom) took a zero
// vector's NaN distance into its top k and dropped true neighbours: zero vectors stay out of its table.
describe.skipIf(testDialect === "postgresql")("datastore zero vectors", () => {
  const withZeros = (n: number) => records(n).map((r, i) => (i % 50 === 0 ? { ...r, vector: new Float32Array(dim) } : r));

  it("finds the true top 10 among them by the KNN scan, and ranks them last, scored null", async () => {
    const store = await openSqliteEngine(":memory:", { annFrom: 1e9 });
    const all = withZeros(3000);
    const row0 = store.createStore("a", "z", "")!;
    expect(store.upsert(row0.id, all).ok).toBe(true);
    const row = store.storeById(row0.id)!;
    for (let q = 0; q < 20; q++) {
      const query = vec();
      expect(store.vectorSearch(row, query, [], 10).map((h) => h.id)).toEqual(trueTop(all, query, 10));
    }
    // Every record of m = 0, scored ones (the true ranking among them) first, then its zero vectors, scored null.
    const query = vec();
    const passing = all.filter((r) => JSON.parse(r.metadata).m === 0);
    const zeros = passing.filter((r) => r.vector.every((x) => x === 0)).map((r) => r.id);
    expect(zeros.length).toBeGreaterThan(0);
    const hits = store.vectorSearch(row, query, [{ path: ["m"], op: "eq", value: 0 }], all.length);
    expect(hits).toHaveLength(passing.length);
    const scored = passing.length - zeros.length;
    expect(hits.slice(0, scored).map((h) => h.id)).toEqual(trueTop(passing, query, scored));
    expect(new Set(hits.slice(scored).map((h) => h.id))).toEqual(new Set(zeros));
    expect(hits.slice(scored).every((h) => h.score === null)).toBe(true);
    await store.close();
  });

  it("takes zero vectors an older Shaker put into sqlite-vec's table out of it, once, at start", async () => {
    const file = tempFile();
    const all = withZeros(1000);
    let store = await openSqliteEngine(file, { annFrom: 1e9 });
    const row0 = store.createStore("a", "z", "")!;
    expect(store.upsert(row0.id, all).ok).toBe(true);
    await store.close();
    // As an older Shaker left it: the zero vectors in the KNN table, no record of the fix.
    const raw = new Database(file);
    sqliteVec.load(raw);
    const zeros = raw.prepare(`SELECT rowid FROM records WHERE vector = zeroblob(length(vector))`).all() as { rowid: number }[];
    expect(zeros).toHaveLength(20);
    for (const { rowid } of zeros)
      raw.prepare(`INSERT INTO ds_vec_${row0.id} (rowid, embedding) VALUES (?, zeroblob(${4 * dim}))`).run(BigInt(rowid));
    raw.prepare("DELETE FROM ds_fixes").run();
    raw.close();
    store = await openSqliteEngine(file, { annFrom: 1e9 });
    const row = store.storeById(row0.id)!;
    for (let q = 0; q < 10; q++) {
      const query = vec();
      expect(store.vectorSearch(row, query, [], 10).map((h) => h.id)).toEqual(trueTop(all, query, 10));
    }
    await store.close();
  });
});

describe("datastore ingest over REST", () => {
  it("writes a large streamed upload, and a bad record in the middle of one writes nothing", async () => {
    const server = await startTestServer();
    try {
      await server.request("POST", "/v1/datastores", { name: "big" });
      const n = 4_000;
      const line = (j: number, prefix = "b") =>
        JSON.stringify({ id: `${prefix}${j}`, text: `bulk ${j}`, metadata: { j }, vector: Array.from({ length: 64 }, rand) });
      async function* body(bad: number) {
        for (let i = 0; i < n; i += 1000) {
          let s = "";
          for (let j = i; j < i + 1000; j++) {
            if (j !== bad) s += `${line(j, bad === 1500 ? "c" : "b")}\n`;
            else if (bad === 1500) s += `${JSON.stringify({ id: `n${j}`, text: "short", vector: [1, 2, 3] })}\n`;
            else s += '{"id": "x", "text": 5}\n';
          }
          yield new TextEncoder().encode(s);
        }
      }
      const post = (bad: number) =>
        fetch(`${server.url}/v1/datastores/big/records`, {
          method: "POST",
          headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/x-ndjson" },
          body: body(bad) as unknown as BodyInit,
          duplex: "half",
        } as RequestInit);
      // (The event loop's delay during such an upload is measured by `npm run bench -- datastore`.)
      const res = await post(-1);
      expect(res.status).toBe(200);

      const refused = await post(n - 100);
      expect(refused.status).toBe(400);
      // A record the store itself refuses (a vector of another dimension) in the second part, with
      // later parts (new ids) already handed to the writer: none of them is written either.
      const otherDimension = await post(1500);
      expect(otherDimension.status).toBe(400);
      const list = await server.request("GET", "/v1/datastores");
      expect(list.body.data.find((s: any) => s.name === "big").record_count).toBe(n);
      await server.request("POST", "/v1/datastores", { name: "fresh" });
      const none = await fetch(`${server.url}/v1/datastores/fresh/records`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/x-ndjson" },
        body: `${line(1)}\n${line(2)}\n{"id": 3}\n${line(4)}\n`,
      });
      expect(none.status).toBe(400);
      const after = await server.request("GET", "/v1/datastores");
      expect(after.body.data.find((s: any) => s.name === "fresh").record_count).toBe(0);
    } finally {
      await server.close();
    }
  }, 120_000);
});

describe("datastores load progress", () => {
  const io = (tty: boolean) => {
    const err: string[] = [];
    return { err, io: { stderr: (s: string) => err.push(s), stderrIsTTY: tty } as unknown as CliIo };
  };

  it("prints periodic plain lines with records/s and an ETA when stderr is not a terminal", () => {
    const { err, io: cli } = io(false);
    const p = new Progress("loading kb", cli, false, 0);
    p.update(0.5, 500);
    p.update(1, 1000);
    p.end();
    expect(err).toHaveLength(2);
    expect(err[0]).toMatch(/^loading kb: 50% 500 records \d+ records\/s ETA \d+:\d\d\n$/);
    expect(err.join("")).not.toContain("\r");
  });

  it("draws a bar redrawn in place on a terminal", () => {
    const { err, io: cli } = io(true);
    const p = new Progress("loading kb", cli, true);
    p.update(0.5, 500, true);
    p.end();
    expect(err[0]).toMatch(/^\rloading kb \[#{15}-{15}\] 50% 500 records \d+ records\/s ETA \d+:\d\d/);
    expect(err[1]).toBe("\n");
  });
});
