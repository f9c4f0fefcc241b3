// The Datastore's approximate nearest-neighbour index: one usearch HNSW graph per store, keyed by the
// records' rowids, holding int8-quantised copies of the vectors (cosine). It only proposes
// candidates: the store layer re-ranks them exactly from the float32 vectors in SQLite, and a
// candidate whose row is gone (deleted, or not yet committed) is simply not found there.
//
// A graph's keys are the rowids mixed (keyOf): usearch finds a key in a hash table with linear
// probing whose hash is the key itself, so rowids, consecutive, filled one run of slots as long as
// the store, and every removal (a delete, a replaced vector) walked that run to its end: 272 µs a
// key in a graph of 100,000 (exp), 12 s for 20,000 ids deleted at once, during which no vector
// search of any store was answered. Mixed, a removal takes 0.53 µs there.
//
// Persistence: the graph is saved next to the SQLite file as `<file>.ann-<storeId>.usearch`, with
// `<...>.usearch.json` saying which generation of the store it reflects. Every write transaction of a
// store bumps its generation in the `ds_ann` table (in the same transaction), so an index file whose
// generation differs from the table's (a crash after a commit and before a save, a file copied from
// elsewhere) or whose dimension differs, or a missing file, is stale: it is rebuilt from the records.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import type * as Usearch from "usearch";

// usearch's ESM entry finds its binary from a stack trace, which fails (silently ending the thread)
// in a worker thread under tsx: its CommonJS entry is loaded instead.
const { Index, MetricKind, ScalarKind } = createRequire(import.meta.url)("usearch") as typeof Usearch;
type UIndex = InstanceType<typeof Index>;

/**
 * The graph's shape: 32 links a node, 64 candidates while inserting, 256 while searching. On 1,000,000
 * clustered 384-dimension vectors (bench/datastore.ts's), 16 links found 0.835 of the true top 10
 * among 128 candidates at 128 while searching and 0.885 at 256; 32 links find 0.965 at 256, in 0.89
 * ms a search, for 16% more build time (an index saved with another shape is rebuilt). 128 candidates
 * while inserting (one add of the same 1,000,000, 200 queries, 64 re-ranked): recall@10 1.000 against
 * 0.973 at 64, in 1.39 ms a search against 1.23, but 400 s of build against 212.
 */
const connectivity = 32;
const expansionAdd = 64;
const expansionSearch = 256;

/**
 * keyOf is a rowid's key in a graph: the rowid times an odd constant, modulo 2^64 (a bijection,
 * undone by rowidOf), which spreads consecutive rowids over the whole hash table. No rowid below 2^53
 * maps to 2^64 - 1, usearch's mark of a free key.
 */
const mixer = 0x9e3779b97f4a7c15n;
const unmixer = 0xf1de83e19937733dn;
export const keyOf = (rowid: bigint): bigint => BigInt.asUintN(64, rowid * mixer);
export const rowidOf = (key: bigint): bigint => BigInt.asUintN(64, key * unmixer);

/** AnnState is one store's index: built once every record is in it. */
export interface AnnState {
  index: UIndex;
  /** rowidKeys says the graph's keys are the rowids themselves (an index saved before keyOf): a compaction replaces it. */
  rowidKeys: boolean;
  dimension: number;
  /** generation is the store's generation the index reflects (when built). */
  generation: number;
  /** built is false while a rebuild is under way; `cursor` is the last rowid it added. */
  built: boolean;
  cursor: number;
  /** dirty says the index changed since it was last saved. */
  dirty: boolean;
  /**
   * removed counts the nodes the graph keeps for vectors since removed or replaced: usearch leaves
   * them in the graph, and searches still walk them. Once compactionDue, a compaction replaces it.
   */
  removed: number;
  /** next is the graph a compaction builds from the records (those up to its cursor so far); it replaces `index` once complete. */
  next?: Graph;
}

/** Graph is a graph being built from the records in rowid order: up to `cursor` it holds every record's vector. */
interface Graph {
  index: UIndex;
  cursor: number;
  removed: number;
}

/**
 * compactionDue says when a built index is to be rebuilt: it holds removed nodes, a quarter of its
 * live ones and at least 1,000; or its keys are rowids (it serves meanwhile).
 */
export function compactionDue(state: AnnState): boolean {
  return state.built && state.next === undefined && (state.rowidKeys || state.removed >= Math.max(1000, state.index.size() / 4));
}

/** newGraph is an empty graph of the shape above. */
export function newGraph(dimension: number): UIndex {
  return new Index({
    dimensions: dimension,
    metric: MetricKind.Cos,
    quantization: ScalarKind.I8,
    connectivity,
    expansion_add: expansionAdd,
    expansion_search: expansionSearch,
    multi: false,
  });
}

/** annMinDimension is the smallest dimension indexed: smaller vectors are scanned (sqlite-vec's float KNN). */
export const annMinDimension = 16;

export function annPath(file: string, storeId: number): string {
  return `${file}.ann-${storeId}.usearch`;
}

/**
 * openAnn loads a store's saved index when it is current (same generation and dimension), else
 * returns an empty index to be rebuilt (built: false). An index of another shape (connectivity) is stale too.
 */
export function openAnn(file: string | undefined, storeId: number, dimension: number, generation: number): AnnState {
  if (file) {
    const path = annPath(file, storeId);
    try {
      const meta = JSON.parse(readFileSync(`${path}.json`, "utf8")) as {
        generation: number;
        dimension: number;
        connectivity?: number;
        removed?: number;
        keys?: "mixed";
      };
      if (meta.generation === generation && meta.dimension === dimension && meta.connectivity === connectivity && existsSync(path)) {
        const index = newGraph(dimension);
        index.load(path);
        const rowidKeys = meta.keys !== "mixed";
        return { index, rowidKeys, dimension, generation, built: true, cursor: 0, dirty: false, removed: meta.removed ?? 0 };
      }
    } catch {
      // no index saved, or unreadable: rebuild
    }
  }
  return { index: newGraph(dimension), rowidKeys: false, dimension, generation, built: false, cursor: 0, dirty: true, removed: 0 };
}

/** saveAnn writes a built index and its meta (each to a temporary name, then renamed). */
export function saveAnn(file: string, storeId: number, state: AnnState): void {
  if (!state.built || !state.dirty) return;
  const path = annPath(file, storeId);
  state.index.save(`${path}.tmp`);
  // The old generation is removed first: an index without its meta file is stale, never mistaken.
  rmSync(`${path}.json`, { force: true });
  renameSync(`${path}.tmp`, path);
  const meta = {
    generation: state.generation,
    dimension: state.dimension,
    connectivity,
    removed: state.removed,
    ...(state.rowidKeys ? {} : { keys: "mixed" }),
  };
  writeFileSync(`${path}.json.tmp`, JSON.stringify(meta));
  renameSync(`${path}.json.tmp`, `${path}.json`);
  state.dirty = false;
}

export function removeAnn(file: string | undefined, storeId: number): void {
  if (!file) return;
  const path = annPath(file, storeId);
  for (const p of [path, `${path}.json`, `${path}.tmp`, `${path}.json.tmp`]) rmSync(p, { force: true });
}

/** keysOf are rowids as a graph's keys (keyOf's, or the rowids themselves in an older graph). */
function keysOf(rowids: bigint[], rowidKeys: boolean): BigUint64Array {
  return rowidKeys ? BigUint64Array.from(rowids) : BigUint64Array.from(rowids, keyOf);
}

/** put adds vectors to a graph under their rowids, replacing those already there; returns how many it replaced. */
function put(index: UIndex, rowidKeys: boolean, dimension: number, keys: bigint[], vectors: Float32Array[]): number {
  if (keys.length === 0) return 0;
  const k = keysOf(keys, rowidKeys);
  const present = index.contains(k) as boolean[] | boolean;
  const again = Array.isArray(present) ? k.filter((_, i) => present[i]) : present ? k : new BigUint64Array(0);
  if (again.length) index.remove(again);
  const flat = new Float32Array(keys.length * dimension);
  for (const [i, v] of vectors.entries()) flat.set(v, i * dimension);
  index.add(k, flat, 0);
  return again.length;
}

/** drop removes rowids from a graph; returns how many it held. */
function drop(index: UIndex, rowidKeys: boolean, keys: bigint[]): number {
  if (keys.length === 0) return 0;
  const counts = index.remove(keysOf(keys, rowidKeys)) as number[] | number;
  return Array.isArray(counts) ? counts.reduce((a, b) => a + b, 0) : counts;
}

/** upTo picks the keys (with their vectors) a graph built up to `cursor` holds already. */
function upTo<T>(cursor: number, keys: bigint[], values: T[]): { keys: bigint[]; values: T[] } {
  const c = BigInt(cursor);
  const at = keys.flatMap((k, i) => (k <= c ? [i] : []));
  return { keys: at.map((i) => keys[i]), values: at.map((i) => values[i]) };
}

/**
 * addVectors puts vectors in the index under their rowids, replacing those already there; a
 * compaction's graph gets those of records it has passed (the rest it reads from the records).
 */
export function addVectors(state: AnnState, keys: bigint[], vectors: Float32Array[]): void {
  if (keys.length === 0) return;
  state.removed += put(state.index, state.rowidKeys, state.dimension, keys, vectors);
  const next = state.next;
  if (next) {
    const passed = upTo(next.cursor, keys, vectors);
    next.removed += put(next.index, false, state.dimension, passed.keys, passed.values);
  }
  state.dirty = true;
}

/**
 * addWritten puts the vectors of records just written (or restored by a rollback) in the index. While
 * the index is rebuilt, a record past the rebuild's cursor is left to the rebuild: added here too,
 * the rebuild would remove and add it again, and each removal leaves a deleted node in the graph that
 * searches still walk (a 100,000-record upload into a new store so indexed found 0.76 of the true top
 * 10, against 1.0 added once).
 */
export function addWritten(state: AnnState, keys: bigint[], vectors: Float32Array[]): void {
  const now = state.built ? { keys, values: vectors } : upTo(state.cursor, keys, vectors);
  addVectors(state, now.keys, now.values);
}

export function removeKeys(state: AnnState, keys: bigint[]): void {
  if (keys.length === 0) return;
  state.removed += drop(state.index, state.rowidKeys, keys);
  if (state.next) state.next.removed += drop(state.next.index, false, upTo(state.next.cursor, keys, keys).keys);
  state.dirty = true;
}

/**
 * compactStep adds the next records (rowid order, past the compaction's cursor; `part` holds up
 * to `rows` of them) to the graph a compaction builds, starting one when none is under way. With the
 * last records added, that graph replaces the index (as searches see it, complete) and is saved
 * with the next save. Returns true once the compaction is done.
 */
export function compactStep(state: AnnState, part: { rowid: number; vector: Float32Array }[], rows: number): boolean {
  state.next ??= { index: newGraph(state.dimension), cursor: 0, removed: 0 };
  const next = state.next;
  if (part.length) {
    next.removed += put(
      next.index,
      false,
      state.dimension,
      part.map((r) => BigInt(r.rowid)),
      part.map((r) => r.vector),
    );
    next.cursor = part[part.length - 1].rowid;
  }
  if (part.length === rows) return false;
  state.index = next.index;
  state.rowidKeys = false;
  state.removed = next.removed;
  state.next = undefined;
  state.dirty = true;
  return true;
}

/** searchAnn returns the rowids of up to k approximate nearest neighbours. */
export function searchAnn(state: AnnState, query: Float32Array, k: number): BigUint64Array {
  const size = state.index.size();
  if (size === 0) return new BigUint64Array(0);
  const keys: BigUint64Array = state.index.search(query, Math.min(k, size), 1).keys;
  if (!state.rowidKeys) for (let i = 0; i < keys.length; i++) keys[i] = rowidOf(keys[i]);
  return keys;
}
