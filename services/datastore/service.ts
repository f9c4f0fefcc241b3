import { MessageChannel } from "node:worker_threads";
import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { DatastoreService, type Record as RecordMsg, SearchMode, type StoreSchema } from "../../gen/shaker/datastore/v1/datastore_pb.js";
import { type Auth, type Identity, requireAccount } from "../shared/auth.js";
import type { Clients } from "../shared/clients.js";
import { errorMetadata, invalidArgument } from "../shared/errors.js";
import { defaultMaxJsonDepth, timestampOf } from "../shared/json.js";
import { namePattern } from "../shared/names.js";
import { Moved, startThread, type Thread } from "../shared/thread.js";
import {
  checkEmbeddings,
  type Embeddings,
  filled,
  isParked,
  type NdjsonRead,
  type ParkedPack,
  type ParkedRead,
  type RecordPack,
  type Records,
  recordsOf,
  textOf,
} from "./record-pack.js";
import {
  checkFloat32s,
  checkIds,
  checkQueryDimension,
  checkRecord,
  checkRecordDimension,
  checkSearch,
  checkStoreName,
  checkStoreRef,
  checkText,
  hybridDepth,
  recordDimensionError,
} from "./rules.js";
import type { DatastoreStore, Hit, RecordInput, StoreRow, UpsertResult } from "./store.js";
import type { Parking } from "./writer.js";

/** embedBatch is how many texts go to the ModelProxy in one Embeddings call. */
const embedBatch = 64;
/**
 * piecesKept is how many NDJSON pieces a part is sent to the reader thread as; past it they are joined
 * first. Copying a message to a thread costs per piece (1M pieces of 4 bytes: 0.94 s of the event
 * loop, against 8.6 ms for 100 pieces of the same 4 MB; exp), and a client chooses how many it sends
 * (RPC pieces, or an HTTP body trickled in small chunks).
 */
const piecesKept = 64;
/** writesAhead is how many parts of a streamed upload the store may hold, written or waiting, at once. */
const writesAhead = 2;
/** rrfK is the constant of reciprocal rank fusion (Cormack et al. use 60). */
const rrfK = 60;

const invalid = invalidArgument;

function storeMsg(row: StoreRow, count: number): MessageInitShape<typeof StoreSchema> {
  return {
    name: row.name,
    embeddingModel: row.embeddingModel,
    dimension: row.dimension,
    recordCount: count,
    createdAt: timestampOf(row.createdAt),
  };
}

function parseMetadata(text: string): JsonObject {
  return JSON.parse(text) as JsonObject;
}

/** What the Datastore's service is built on. */
export interface DatastoreServiceDeps {
  /** store is the Datastore's tables, opened (and closed) by the composition root. */
  store: DatastoreStore;
  /** auth identifies callers. */
  auth: Auth;
  /** clients reach the ModelProxy, which embeds texts. */
  clients: Pick<Clients, "modelproxy">;
  /** maxJsonDepth bounds how deeply a record sent as JSON (UpsertRecordsRequest.ndjson) nests; default defaultMaxJsonDepth (64). */
  maxJsonDepth?: number;
}

/** DatastoreServiceHandle is the Datastore's service: its handlers, and what the start banner says of it. */
export interface DatastoreServiceHandle {
  impl: ServiceImpl<typeof DatastoreService>;
  /** routes registers the handlers on a router. */
  routes(router: ConnectRouter): void;
  /** describe says which database and vector search engine answer (for the start banner). */
  describe(): string;
  close(): Promise<void>;
}

/** createDatastoreService builds the Datastore's handlers on its store. */
export function createDatastoreService(deps: DatastoreServiceDeps): DatastoreServiceHandle {
  const { store } = deps;
  const maxJsonDepth = deps.maxJsonDepth ?? defaultMaxJsonDepth;
  /**
   * The reader thread (reader-thread.ts), started by the first request with NDJSON records (a new
   * one after a failure), with the store's parking when it has one: a streamed upload's packs then
   * go from the reader straight to the writer thread.
   */
  let reader: Promise<{ thread: Thread; parking?: Parking }> | undefined;
  let parkedKeys = 0;
  async function startReader() {
    const thread = await startThread("datastore's reader", new URL("./reader-thread.ts", import.meta.url), {});
    const parking = await store.parking?.();
    if (parking) {
      const { port1, port2 } = new MessageChannel();
      await parking.attach(port1);
      await thread.call("attach", new Moved(port2, [port2]));
    }
    return { thread, parking };
  }
  /** readNdjson reads records in the reader thread; `park` asks for the pack to be parked in the writer thread, when there is one. */
  async function readNdjson(pieces: Uint8Array[], first: number, dimension: number, park: boolean) {
    reader ??= startReader();
    const started = reader;
    let parked: { parking: Parking; key: number } | undefined;
    try {
      const { thread, parking } = await started;
      if (park && parking) parked = { parking, key: ++parkedKeys };
      const sent = pieces.length > piecesKept ? [Buffer.concat(pieces)] : pieces;
      return { read: await thread.call<NdjsonRead | ParkedRead>("read", sent, first, dimension, maxJsonDepth, parked?.key), parking };
    } catch (e) {
      // The reader may have posted the pack to the writer thread before it failed: let go there.
      if (parked) void parked.parking.letGo([parked.key]).catch(() => undefined);
      if (reader === started) reader = undefined;
      void started.then(({ thread }) => thread.close()).catch(() => undefined);
      throw e;
    }
  }

  /** lookup finds an account's store by name; a name no store may have (checkStoreName) finds none without asking the database. */
  async function lookup(accountId: string, name: string): Promise<StoreRow | undefined> {
    return namePattern.test(name) ? store.store(accountId, name) : undefined;
  }

  /** storeFor finds a store the caller may use: a run token reaches only the stores bound to its workflow. */
  async function storeFor(identity: Identity, name: string, write: boolean): Promise<StoreRow> {
    if (identity.kind === "run") {
      const binding = identity.claims.datastores.find((d) => d.name === name);
      if (!binding)
        throw new ConnectError(`workflow '${identity.claims.workflow}' is not bound to datastore '${name}'`, Code.PermissionDenied);
      if (write && !binding.write) {
        throw new ConnectError(
          `workflow '${identity.claims.workflow}' may only read datastore '${name}'; bind it with write: true to upsert`,
          Code.PermissionDenied,
        );
      }
    }
    checkStoreRef(name);
    const row = await lookup(requireAccount(identity), name);
    if (!row) throw new ConnectError(`datastore '${name}' does not exist`, Code.NotFound);
    return row;
  }

  function manageOnly(identity: Identity): string {
    if (identity.kind === "run") throw new ConnectError("a workflow cannot create or drop datastores", Code.PermissionDenied);
    return requireAccount(identity);
  }

  /** embed turns texts into vectors through the ModelProxy, in batches. */
  async function embed(accountId: string, model: string, texts: string[], ctx: HandlerContext): Promise<number[][]> {
    const out: number[][] = [];
    for (let i = 0; i < texts.length; i += embedBatch) {
      const input = texts.slice(i, i + embedBatch);
      const body: JsonObject = { input };
      if (model) body.model = model;
      const resp = await deps.clients.modelproxy.embeddings({ body }, { headers: deps.auth.serviceHeaders(accountId), signal: ctx.signal });
      const data = (resp.response?.data ?? []) as { embedding?: unknown; index?: unknown }[];
      if (!Array.isArray(data) || data.length !== input.length) {
        throw new ConnectError(
          `the embedding model answered ${Array.isArray(data) ? data.length : 0} vectors for ${input.length} texts`,
          Code.Internal,
        );
      }
      const sorted = [...data].sort((a, b) => Number(a.index ?? 0) - Number(b.index ?? 0));
      for (const d of sorted) {
        if (!Array.isArray(d.embedding))
          throw new ConnectError("the embedding model answered an entry without an embedding", Code.Internal);
        out.push(d.embedding as number[]);
      }
    }
    return out;
  }

  /**
   * prepare validates records (naming `records[i]`, counted from the start of the request) and
   * embeds those without a vector. `dimension` is the store's, or that of the request's first vector.
   */
  async function prepare(
    row: StoreRow,
    accountId: string,
    records: RecordMsg[],
    offset: number,
    dims: { dimension: number },
    ctx: HandlerContext,
  ): Promise<{ input: RecordInput[]; embedded: number }> {
    const missing: number[] = [];
    const check = (v: ArrayLike<number>, i: number) => {
      dims.dimension ||= v.length;
      checkRecordDimension(v.length, dims.dimension, offset + i);
    };
    records.forEach((r, i) => {
      checkRecord(r, offset + i);
      if (r.vector.length === 0) missing.push(i);
      else check(r.vector, i);
    });
    const vectors = new Map<number, number[]>();
    if (missing.length) {
      const got = await embed(
        accountId,
        row.embeddingModel,
        missing.map((i) => records[i].text),
        ctx,
      );
      missing.forEach((i, j) => {
        check(got[j], i);
        vectors.set(i, got[j]);
      });
    }
    // Every vector of the part in one buffer, each record's a view of it: one allocation where one
    // per record cost the event loop 2 µs each, and the part crosses to the writer thread as one copy.
    const d = dims.dimension;
    const packed = new Float32Array(records.length * d);
    const input = records.map((r, i) => {
      const vector = packed.subarray(i * d, (i + 1) * d);
      vector.set(vectors.get(i) ?? r.vector);
      checkFloat32s(vector, offset + i);
      return { id: r.id, text: r.text, metadata: JSON.stringify(r.metadata ?? {}), vector };
    });
    return { input, embedded: missing.length };
  }

  /**
   * prepareNdjson reads records sent as NDJSON (`first` is the first one's index in the request) in
   * the reader thread, and embeds those without a vector, as prepare does. With `park`, the pack
   * waits in the writer thread when there is one (the part is then written there): what the call
   * gives is `records` to write, how many, and how many were embedded.
   */
  async function prepareNdjson(
    row: StoreRow,
    accountId: string,
    pieces: Uint8Array[],
    first: number,
    dims: { dimension: number },
    ctx: HandlerContext,
    park = false,
  ): Promise<{ records: RecordPack | ParkedPack; n: number; embedded: number; parking?: Parking }> {
    const { read, parking } = await readNdjson(pieces, first, dims.dimension, park);
    if ("error" in read) {
      const { message, param, code } = read.error;
      throw new ConnectError(message, Code.InvalidArgument, {
        [errorMetadata.param]: param,
        ...(code ? { [errorMetadata.code]: code } : {}),
      });
    }
    const parked = "parked" in read;
    const { missing } = read;
    let fill: Embeddings | undefined;
    try {
      if (missing.length) {
        const texts = parked ? read.texts : missing.map((i) => textOf(read.pack, i));
        const got = await embed(accountId, row.embeddingModel, texts, ctx);
        fill = checkEmbeddings(missing, got, parked ? read.dimension : read.pack.dimension, first);
      }
    } catch (e) {
      if (parked) void parking?.letGo([read.parked]).catch(() => undefined);
      throw e;
    }
    const dimension = fill?.dimension ?? (parked ? read.dimension : read.pack.dimension);
    dims.dimension ||= dimension;
    if (parked) return { records: { parked: read.parked, ...(fill ? { fill } : {}) }, n: read.n, embedded: missing.length, parking };
    return { records: fill ? filled(read.pack, fill) : read.pack, n: read.pack.n, embedded: missing.length };
  }

  /** stillThere refuses a write to a store dropped while its records were being embedded or streamed; returns it as it is now. */
  async function stillThere(row: StoreRow): Promise<StoreRow> {
    const now = await store.store(row.accountId, row.name);
    if (now?.id !== row.id) throw new ConnectError(`datastore '${row.name}' was dropped during the upsert`, Code.NotFound);
    return now;
  }

  function refused(result: UpsertResult, offset = 0): number {
    if (result.ok) return result.upserted;
    throw recordDimensionError(result.got, result.want, offset + result.index);
  }

  async function queryVector(
    row: StoreRow,
    accountId: string,
    query: string,
    vector: number[],
    ctx: HandlerContext,
  ): Promise<Float32Array> {
    let v = vector;
    // checkSearch has made sure there is a query to embed when there is no vector.
    if (v.length === 0) [v] = await embed(accountId, row.embeddingModel, [query], ctx);
    checkQueryDimension(v.length, row.dimension);
    return new Float32Array(v);
  }

  const impl: ServiceImpl<typeof DatastoreService> = {
    async createStore(req, ctx) {
      const accountId = manageOnly(await deps.auth.identify(ctx.requestHeader));
      checkStoreName(req.name);
      checkText(req.embeddingModel, "embedding_model");
      const row = await store.createStore(accountId, req.name, req.embeddingModel);
      if (!row) throw new ConnectError(`datastore '${req.name}' already exists`, Code.AlreadyExists);
      return { store: storeMsg(row, 0) };
    },
    async listStores(_req, ctx) {
      const identity = await deps.auth.identify(ctx.requestHeader);
      let rows = await store.listStores(requireAccount(identity));
      if (identity.kind === "run") rows = rows.filter((r) => identity.claims.datastores.some((d) => d.name === r.name));
      return { stores: await Promise.all(rows.map(async (r) => storeMsg(r, await store.count(r.id)))) };
    },
    async deleteStore(req, ctx) {
      const accountId = manageOnly(await deps.auth.identify(ctx.requestHeader));
      const row = await lookup(accountId, req.name);
      if (!row || !(await store.dropStore(row.id))) throw new ConnectError(`datastore '${req.name}' does not exist`, Code.NotFound);
      return { name: req.name };
    },
    async upsertRecords(req, ctx) {
      const identity = await deps.auth.identify(ctx.requestHeader);
      const row = await storeFor(identity, req.store, true);
      const dims = { dimension: row.dimension };
      const prepared = await prepare(row, identity.accountId, req.records, 0, dims, ctx);
      let { input, embedded } = prepared;
      if (req.ndjson.length) {
        const more = await prepareNdjson(row, identity.accountId, req.ndjson, input.length, dims, ctx);
        input = [...input, ...recordsOf(more.records)];
        embedded += more.embedded;
      }
      return { upserted: refused(await store.upsert((await stillThere(row)).id, input)), embedded };
    },
    /**
     * upsertRecordsStream writes each part straight into the tables as it arrives, in one
     * transaction held from the first part to the end: all or nothing, and visible to searches
     * only once committed. The next part is read and checked while the store writes the previous one.
     * A drop of the store waits for the upload to end (it takes the writer on SQLite, the store's
     * row lock on PostgreSQL), so the store is checked once, before.
     */
    async upsertRecordsStream(requests, ctx) {
      const identity = await deps.auth.identify(ctx.requestHeader);
      const it = requests[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done) throw invalid("the stream sent no part; the first part must name the 'store'", "store");
      const row = await stillThere(await storeFor(identity, first.value.store, true));
      return store.upload(row.id, async (write) => {
        const dims = { dimension: row.dimension };
        let offset = 0;
        let embedded = 0;
        // Up to `writesAhead` parts are handed to the store before the oldest is done: the writer
        // then starts the next part the moment it ends one, not a round trip later.
        const inFlight: Promise<UpsertResult>[] = [];
        const hand = async (records: Records, n: number, parking?: Parking) => {
          try {
            if (inFlight.length >= writesAhead) refused(await inFlight.shift()!);
          } catch (e) {
            // The part is not written: a pack parked for it goes.
            if (isParked(records)) void parking?.letGo([records.parked]).catch(() => undefined);
            throw e;
          }
          inFlight.push(write(records));
          offset += n;
        };
        try {
          for (let part: IteratorResult<(typeof first)["value"]> = first; !part.done; part = await it.next()) {
            const { records, ndjson } = part.value;
            if (records.length || !ndjson.length) {
              const prepared = await prepare(row, identity.accountId, records, offset, dims, ctx);
              await hand(prepared.input, records.length);
              embedded += prepared.embedded;
            }
            if (ndjson.length) {
              const prepared = await prepareNdjson(row, identity.accountId, ndjson, offset, dims, ctx, true);
              await hand(prepared.records, prepared.n, prepared.parking);
              embedded += prepared.embedded;
            }
          }
          while (inFlight.length) refused(await inFlight.shift()!);
          return { upserted: offset, embedded };
        } finally {
          // Parts still being written when a later one is refused: the upload ends after them.
          await Promise.allSettled(inFlight);
        }
      });
    },
    async getRecords(req, ctx) {
      const row = await storeFor(await deps.auth.identify(ctx.requestHeader), req.store, false);
      checkIds(req.ids);
      const rows = await store.getRecords(row, req.ids);
      return {
        records: rows.map((r) => ({
          id: r.id,
          text: r.text,
          metadata: parseMetadata(r.metadata),
          vector: Array.from(r.vector),
        })),
      };
    },
    async deleteRecords(req, ctx) {
      const row = await storeFor(await deps.auth.identify(ctx.requestHeader), req.store, true);
      checkIds(req.ids);
      return { deleted: await store.deleteRecords(row, req.ids) };
    },
    async search(req, ctx) {
      const identity = await deps.auth.identify(ctx.requestHeader);
      const row = await storeFor(identity, req.store, false);
      const { limit, conditions } = checkSearch(req);
      let hits: Hit[];
      switch (req.mode) {
        case SearchMode.VECTOR:
          hits = await store.vectorSearch(row, await queryVector(row, identity.accountId, req.query, req.vector, ctx), conditions, limit);
          break;
        case SearchMode.HYBRID: {
          const depth = hybridDepth(limit);
          const vector = await queryVector(row, identity.accountId, req.query, req.vector, ctx);
          const fused = new Map<string, Hit>();
          for (const list of [
            await store.keywordSearch(row, req.query, conditions, depth),
            await store.vectorSearch(row, vector, conditions, depth),
          ]) {
            list.forEach((h, rank) => {
              const prev = fused.get(h.id);
              fused.set(h.id, { ...h, score: (prev?.score ?? 0) + 1 / (rrfK + rank + 1) });
            });
          }
          hits = [...fused.values()].sort((a, b) => b.score - a.score).slice(0, limit);
          break;
        }
        default:
          hits = await store.keywordSearch(row, req.query, conditions, limit);
      }
      return { records: hits.map((h) => ({ id: h.id, text: h.text, metadata: parseMetadata(h.metadata), score: h.score })) };
    },
  };

  return {
    impl,
    routes: (router) => router.service(DatastoreService, impl),
    describe: () => `${store.dialect}, vector search by ${store.vectorEngine}`,
    // The store is the composition root's to close; the handlers hold the reader thread.
    async close() {
      const started = reader;
      reader = undefined;
      await (await started?.catch(() => undefined))?.thread.close();
    },
  };
}
