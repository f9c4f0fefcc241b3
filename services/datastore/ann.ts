// The Datastore's approximate nearest-neighbour index: one usearch HNSW graph per store, keyed by the
// records' rowids, holding int8-quantised copies of the vectors (cosine). It only proposes
// candidates: the store layer re-ranks them exactly from the float32 vectors in SQLite, and a
// candidate whose row is gone (deleted, or not yet committed) is simply not found there.
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
 * ms a search, for 16% more build time (an index saved with another shape is rebuilt).
 */
const connectivity = 32;
const expansionAdd = 64;
const expansionSearch = 256;

/** AnnState is one store's index: built once every record is in it. */
export interface AnnState {
  index: UIndex;
  dimension: number;
  /** generation is the store's generation the index reflects (when built). */
  generation: number;
  /** built is false while a rebuild is under way; `cursor` is the last rowid it added. */
  built: boolean;
  cursor: number;
  /** dirty says the index changed since it was last saved. */
  dirty: boolean;
}

function fresh(dimension: number): UIndex {
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
      const meta = JSON.parse(readFileSync(`${path}.json`, "utf8")) as { generation: number; dimension: number; connectivity?: number };
      if (meta.generation === generation && meta.dimension === dimension && meta.connectivity === connectivity && existsSync(path)) {
        const index = fresh(dimension);
        index.load(path);
        return { index, dimension, generation, built: true, cursor: 0, dirty: false };
      }
    } catch {
      // no index saved, or unreadable: rebuild
    }
  }
  return { index: fresh(dimension), dimension, generation, built: false, cursor: 0, dirty: true };
}

/** saveAnn writes a built index and its generation (each to a temporary name, then renamed). */
export function saveAnn(file: string, storeId: number, state: AnnState): void {
  if (!state.built || !state.dirty) return;
  const path = annPath(file, storeId);
  state.index.save(`${path}.tmp`);
  // The old generation is removed first: an index without its meta file is stale, never mistaken.
  rmSync(`${path}.json`, { force: true });
  renameSync(`${path}.tmp`, path);
  writeFileSync(`${path}.json.tmp`, JSON.stringify({ generation: state.generation, dimension: state.dimension, connectivity }));
  renameSync(`${path}.json.tmp`, `${path}.json`);
  state.dirty = false;
}

export function removeAnn(file: string | undefined, storeId: number): void {
  if (!file) return;
  const path = annPath(file, storeId);
  for (const p of [path, `${path}.json`, `${path}.tmp`, `${path}.json.tmp`]) rmSync(p, { force: true });
}

/** addVectors puts vectors in the index under their rowids, replacing those already there. */
export function addVectors(state: AnnState, keys: bigint[], vectors: Float32Array[]): void {
  if (keys.length === 0) return;
  const k = BigUint64Array.from(keys);
  const present = state.index.contains(k) as boolean[] | boolean;
  const again = Array.isArray(present) ? k.filter((_, i) => present[i]) : present ? k : new BigUint64Array(0);
  if (again.length) state.index.remove(again);
  const flat = new Float32Array(keys.length * state.dimension);
  for (const [i, v] of vectors.entries()) flat.set(v, i * state.dimension);
  state.index.add(k, flat, 0);
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
  const cursor = BigInt(state.cursor);
  const now = keys.flatMap((k, i) => (state.built || k <= cursor ? [i] : []));
  addVectors(
    state,
    now.map((i) => keys[i]),
    now.map((i) => vectors[i]),
  );
}

export function removeKeys(state: AnnState, keys: bigint[]): void {
  if (keys.length === 0) return;
  state.index.remove(BigUint64Array.from(keys));
  state.dirty = true;
}

/** searchAnn returns the rowids of up to k approximate nearest neighbours. */
export function searchAnn(state: AnnState, query: Float32Array, k: number): BigUint64Array {
  const size = state.index.size();
  if (size === 0) return new BigUint64Array(0);
  return state.index.search(query, Math.min(k, size), 1).keys;
}
