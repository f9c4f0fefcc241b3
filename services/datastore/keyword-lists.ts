// Top-k keyword search without scoring every match. FTS5 ranks a query by computing BM25 for every
// record that holds one of its words: a word found in 80,000 of a million records costs tens of
// milliseconds however few hits are asked for. Search engines avoid that with postings ordered by
// impact and a threshold algorithm that stops once no unread posting can enter the top k (Fagin's
// TA; Lucene's block-max WAND is its cousin). This is that, kept in memory per store and word:
//
// - A word's list holds every record containing it: rowid, term frequency and record length (in
//   tokens), read from FTS5 itself (its BM25 of the one-word query, inverted, and its docsize), so
//   tokenising and stemming are FTS5's. It is ordered by the word's BM25 weight at the average
//   record length when it was built (`ref`).
// - Scores are FTS5's BM25 formula on the index's current row count, average length and document
//   frequencies (its averages record), summed over the query's words in their order, as FTS5 does:
//   the same scores its `rank` gives (to the last bit or so: each side's own log()).
// - The walk reads each word's list in order and scores each record it meets in full (the other
//   words' lists are looked up by rowid). It stops when the k-th best score reaches what any record
//   not yet met could score: the sum of each word's next weight, times how much the average length
//   has grown since the list was built (a weight can only rise by that factor). So the top k is
//   exact, and a common word's query reads about k postings instead of all of them.
// - Inserts after a list was built are read when it is next used (FTS5 rows past its last rowid).
//   An update or a delete in the store (counted in ds_keyword by the writer, in its transaction)
//   drops the store's lists: they are built again when next used.
// - Lists are capped in entries over all stores. Past the cap, lists go from the account (the
//   stores' owner) that holds the most entries, its least recently used first: an account's
//   searches of common words cannot push out another's lists while it holds more than they do
//   (each keeps at least an equal share of the cap, when it uses that much). A query whose lists
//   together would pass the cap, or of more than maxWords words, is ranked by FTS5 as before.

/** FTS5's BM25 parameters (fts5_aux.c). */
const k1 = 1.2;
const b = 0.75;

/** maxWords is the most distinct words of a query the lists answer. */
const maxWords = 64;

/** bytesPerEntry is what a list entry takes (rowid, frequency, length). */
export const bytesPerEntry = 16;

/** IndexState is what the store's FTS5 index holds in the reading snapshot. */
export interface IndexState {
  /** rewrites counts the store's updates and deletes (ds_keyword). */
  rewrites: number;
  /** rows and tokens are FTS5's totals (its averages record). */
  rows: number;
  tokens: number;
  /** lastRowid is the largest rowid in the index. */
  lastRowid: number;
}

/** ListSource reads a store's FTS5 index, inside one read transaction for one search. */
export interface ListSource {
  state(storeId: number): IndexState;
  /** postings returns [rowid, bm25 (FTS5's, negative), record length] of the word's records past rowid `after`. */
  postings(storeId: number, word: string, after: number): [number, number, number][];
}

/** An account's lists, least recently used first, and the entries they hold. */
interface Holder {
  lists: Map<string, List>;
  held: number;
}

interface List {
  key: string;
  holder: Holder;
  /** ref is the average record length the order was computed at. */
  ref: number;
  rowids: Float64Array;
  tfs: Uint32Array;
  sizes: Uint32Array;
  /** rows and lastRowid are the index's at the last read. */
  rows: number;
  lastRowid: number;
  /** byRowid is the entries' positions in rowid order, made when another word's walk looks this one up. */
  byRowid?: { rowids: Float64Array; at: Uint32Array };
}

/** held is what a list counts against the cap: its entries, and its rowid order when made (12 of 16 bytes an entry). */
function held(list: List): number {
  return list.rowids.length + (list.byRowid ? Math.ceil((list.rowids.length * 3) / 4) : 0);
}

/** idf is FTS5's inverse document frequency of a phrase found in `hits` of `rows` records. */
function idf(rows: number, hits: number): number {
  const v = Math.log((rows - hits + 0.5) / (hits + 0.5));
  return v <= 0 ? 1e-6 : v;
}

/** weight is a word's BM25 part for a record without its idf: FTS5's expression, in its order. */
function weight(tf: number, size: number, avgdl: number): number {
  return (tf * (k1 + 1.0)) / (tf + k1 * (1 - b + (b * size) / avgdl));
}

/** varint decodes SQLite's (and FTS5's) variable-length integer at `pos`: [value, next position]. */
export function varint(buf: Uint8Array, pos: number): [number, number] {
  let v = 0;
  for (let i = 0; i < 8; i++) {
    const byte = buf[pos + i];
    v = v * 128 + (byte & 0x7f);
    if (byte < 0x80) return [v, pos + i + 1];
  }
  return [v * 256 + buf[pos + 8], pos + 9];
}

/** Scored is a record's rowid and BM25 score (higher is better). */
export interface Scored {
  rowid: number;
  score: number;
}

/** keywordLists keeps lists of up to `maxEntries` entries in all and answers unfiltered top-k keyword searches from them. */
export function keywordLists(maxEntries: number) {
  /** lists by `${storeId} ${word}`. */
  const lists = new Map<string, List>();
  /** holders by account. */
  const holders = new Map<string, Holder>();
  const rewrites = new Map<number, number>();
  let entries = 0;
  let visited = 0;

  /** count adds a list's entries (or takes them away, sign -1) to the total and to its account's. */
  function count(list: List, sign: 1 | -1): void {
    const n = sign * held(list);
    entries += n;
    list.holder.held += n;
  }

  function drop(key: string): void {
    const list = lists.get(key);
    if (!list) return;
    count(list, -1);
    lists.delete(key);
    list.holder.lists.delete(key);
  }

  /** keep holds a list under its key, most recently used of its account's. */
  function keep(list: List): void {
    lists.set(list.key, list);
    list.holder.lists.set(list.key, list);
    count(list, 1);
  }

  /**
   * fit drops lists until the entries are within the cap: each time the least recently used list of
   * the account holding the most, never `current` (the list a search has just read) unless it is
   * all that account holds. A list dropped while a search uses it still answers that search.
   */
  function fit(current: string): void {
    while (entries > maxEntries) {
      let most: Holder | undefined;
      for (const h of holders.values()) if (h.lists.size > 0 && (!most || h.held > most.held)) most = h;
      if (!most) return;
      let victim = current;
      for (const k of most.lists.keys()) {
        if (k !== current) {
          victim = k;
          break;
        }
      }
      drop(victim);
    }
  }

  /** fresh drops a store's lists when it saw an update or a delete since they were built. */
  function fresh(storeId: number, state: IndexState): void {
    if (rewrites.get(storeId) === state.rewrites) return;
    const prefix = `${storeId} `;
    for (const key of [...lists.keys()]) if (key.startsWith(prefix)) drop(key);
    rewrites.set(storeId, state.rewrites);
  }

  /**
   * read brings a word's list up to date with the index: the records past its last rowid are
   * read, their frequencies recovered from FTS5's BM25, and merged in order. Undefined when the list
   * would pass the cap, or a frequency does not come out whole (then FTS5 answers the query).
   */
  function read(source: ListSource, holder: Holder, storeId: number, word: string, state: IndexState): List | undefined {
    const key = `${storeId} ${word}`;
    const list = lists.get(key);
    if (list) {
      // Most recently used last.
      holder.lists.delete(key);
      holder.lists.set(key, list);
      if (list.rows === state.rows && list.lastRowid === state.lastRowid) return list;
    }
    const after = list?.lastRowid ?? 0;
    const rows = source.postings(storeId, word, after);
    if (list && rows.length === 0) {
      // Records were added, none with this word: the list (and its rowid order) stands as it is.
      list.rows = state.rows;
      list.lastRowid = state.lastRowid;
      return list;
    }
    const have = list?.rowids.length ?? 0;
    if (have + rows.length > maxEntries) {
      drop(key);
      return undefined;
    }
    const avgdl = state.tokens / state.rows;
    const ref = list?.ref ?? avgdl;
    // FTS5's idf for this snapshot: every record holding the word is in the list or in `rows`.
    const wordIdf = idf(state.rows, have + rows.length);
    const added = rows.map(([rowid, bm25, size]) => {
      const part = -bm25 / wordIdf;
      const tf = (part * k1 * (1 - b + (b * size) / avgdl)) / (k1 + 1.0 - part);
      return { rowid, tf: Math.round(tf), size, exact: Math.abs(tf - Math.round(tf)) < 1e-6 * Math.max(1, tf) };
    });
    if (added.some((a) => !a.exact || a.tf < 1)) {
      drop(key);
      return undefined;
    }
    added.sort((x, y) => weight(y.tf, y.size, ref) - weight(x.tf, x.size, ref) || x.rowid - y.rowid);
    const n = have + added.length;
    const next: List = {
      key,
      holder,
      ref,
      rowids: new Float64Array(n),
      tfs: new Uint32Array(n),
      sizes: new Uint32Array(n),
      rows: state.rows,
      lastRowid: state.lastRowid,
    };
    // Merge the two ordered runs.
    let i = 0;
    let j = 0;
    for (let o = 0; o < n; o++) {
      const takeOld =
        list !== undefined &&
        i < have &&
        (j >= added.length || weight(list.tfs[i], list.sizes[i], ref) >= weight(added[j].tf, added[j].size, ref));
      if (takeOld) {
        next.rowids[o] = list!.rowids[i];
        next.tfs[o] = list!.tfs[i];
        next.sizes[o] = list!.sizes[i];
        i++;
      } else {
        next.rowids[o] = added[j].rowid;
        next.tfs[o] = added[j].tf;
        next.sizes[o] = added[j].size;
        j++;
      }
    }
    drop(key);
    keep(next);
    fit(key);
    return next;
  }

  /** position finds a rowid in a list (-1 when the record does not hold its word). */
  function position(list: List, rowid: number): number {
    if (!list.byRowid) {
      const order = Uint32Array.from(list.rowids.keys()).sort((x, y) => list.rowids[x] - list.rowids[y]);
      // A list dropped for the cap during this search still answers it, but no longer counts.
      const counted = lists.get(list.key) === list;
      if (counted) count(list, -1);
      list.byRowid = { rowids: Float64Array.from(order, (p) => list.rowids[p]), at: order };
      if (counted) count(list, 1);
    }
    const { rowids, at } = list.byRowid;
    let lo = 0;
    let hi = rowids.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (rowids[mid] === rowid) return at[mid];
      if (rowids[mid] < rowid) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  return {
    /** entries is how many list entries are held, over all stores. */
    get entries(): number {
      return entries;
    },
    /** heldBy is how many list entries an account's stores hold. */
    heldBy(account: string): number {
      return holders.get(account)?.held ?? 0;
    },
    /** visited is how many list entries the last search read. */
    get visited(): number {
      return visited;
    },
    /**
     * search returns the `limit` best records of an account's store holding any of `words`
     * (distinct, in the query's order), best first; undefined when the lists cannot answer (FTS5
     * then does).
     */
    search(source: ListSource, account: string, storeId: number, words: string[], limit: number): Scored[] | undefined {
      // A long text (a pasted document) would build a list per word: FTS5 ranks it in one pass instead.
      if (words.length > maxWords) return undefined;
      const state = source.state(storeId);
      if (state.rows === 0 || limit <= 0) return [];
      fresh(storeId, state);
      let holder = holders.get(account);
      if (!holder) holders.set(account, (holder = { lists: new Map(), held: 0 }));
      const used: List[] = [];
      let total = 0;
      for (const word of words) {
        const list = read(source, holder, storeId, word, state);
        // A query whose lists together pass the cap (each read may have dropped the one before) is FTS5's.
        total += list?.rowids.length ?? Number.POSITIVE_INFINITY;
        if (!list || total > maxEntries) return undefined;
        used.push(list);
      }
      const avgdl = state.tokens / state.rows;
      const idfs = used.map((l) => idf(state.rows, l.rowids.length));
      // A weight at the list's reference length, times growth, bounds the weight now (see the top).
      const growth = used.map((l) => Math.max(1, avgdl / l.ref));
      const score = (rowid: number, size: number, from: number, tf: number): number => {
        let s = 0;
        for (let w = 0; w < used.length; w++) {
          if (w === from) {
            s += idfs[w] * weight(tf, size, avgdl);
            continue;
          }
          const p = position(used[w], rowid);
          s += idfs[w] * weight(p < 0 ? 0 : used[w].tfs[p], size, avgdl);
        }
        return s;
      };
      const top: Scored[] = [];
      const seen = new Set<number>();
      const at = used.map(() => 0);
      visited = 0;
      for (;;) {
        let bound = 0;
        let open = false;
        for (let w = 0; w < used.length; w++) {
          const l = used[w];
          const p = at[w];
          if (p >= l.rowids.length) continue;
          open = true;
          bound += idfs[w] * weight(l.tfs[p], l.sizes[p], l.ref) * growth[w];
        }
        // Records not met yet can at most tie the k-th (within rounding): FTS5 orders ties arbitrarily too.
        if (!open || (top.length === limit && top[limit - 1].score >= bound * (1 - 1e-12))) break;
        for (let w = 0; w < used.length; w++) {
          const l = used[w];
          const p = at[w]++;
          if (p >= l.rowids.length) continue;
          visited++;
          const rowid = l.rowids[p];
          if (seen.has(rowid)) continue;
          seen.add(rowid);
          const s = used.length === 1 ? idfs[0] * weight(l.tfs[p], l.sizes[p], avgdl) : score(rowid, l.sizes[p], w, l.tfs[p]);
          if (top.length === limit && !better(s, rowid, top[limit - 1])) continue;
          // Insert in order: best first, ties by rowid.
          let lo = 0;
          let hi = top.length;
          while (lo < hi) {
            const mid = (lo + hi) >>> 1;
            if (better(s, rowid, top[mid])) hi = mid;
            else lo = mid + 1;
          }
          top.splice(lo, 0, { rowid, score: s });
          if (top.length > limit) top.pop();
        }
      }
      return top;
    },
  };
}

function better(score: number, rowid: number, than: Scored): boolean {
  return score > than.score || (score === than.score && rowid < than.rowid);
}
