import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  type DatastoreService,
  type Record as RecordMsg,
  SearchMode,
  type StoreSchema,
} from "../../gen/shaker/datastore/v1/datastore_pb.js";
import { type Identity, requireAccount } from "../shared/auth.js";
import type { ServiceDeps } from "../shared/deps.js";
import { invalidArgument } from "../shared/errors.js";
import { timestampOf } from "../shared/json.js";
import type { Condition } from "./filter.js";
import {
  checkQueryDimension,
  checkRecord,
  checkRecordDimension,
  checkSearch,
  checkStoreName,
  checkStoreRef,
  hybridDepth,
  recordDimensionError,
} from "./rules.js";
import { annFromDefault, createDatastoreStore, type Hit, type RecordInput, type StoreRow, type UpsertResult } from "./store.js";
import { inThreadWriter, type Writer, writerThread } from "./writer.js";

/** embedBatch is how many texts go to the ModelProxy in one Embeddings call. */
const embedBatch = 64;
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

/** createDatastoreService builds the Datastore's handlers on its own SQLite file. */
export function createDatastoreService(deps: ServiceDeps): { impl: ServiceImpl<typeof DatastoreService>; close(): Promise<void> } {
  // SHAKER_DATASTORE_ANN_FROM: the store size from which vector searches use the ANN index (tests lower it).
  const annFrom = Number(process.env.SHAKER_DATASTORE_ANN_FROM ?? annFromDefault);
  const memory = deps.dbFile === ":memory:";
  // On a file this connection only reads: the writer thread writes (and keeps the ANN indexes).
  const store = createDatastoreStore(deps.dbFile, { ann: memory, annFrom });
  const writer: Promise<Writer> = memory ? Promise.resolve(inThreadWriter(store)) : writerThread(deps.dbFile, { annFrom });
  // A writer that failed to start fails the calls that need it, not the process.
  writer.catch(() => undefined);

  /** storeFor finds a store the caller may use: a run token reaches only the stores bound to its workflow. */
  function storeFor(identity: Identity, name: string, write: boolean): StoreRow {
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
    const row = store.store(requireAccount(identity), name);
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
    const input = records.map((r, i) => ({
      id: r.id,
      text: r.text,
      metadata: JSON.stringify(r.metadata ?? {}),
      vector: new Float32Array(vectors.get(i) ?? r.vector),
    }));
    return { input, embedded: missing.length };
  }

  /** stillThere refuses a write to a store dropped while its records were being embedded or streamed; returns it as it is now. */
  function stillThere(row: StoreRow): StoreRow {
    const now = store.store(row.accountId, row.name);
    if (now?.id !== row.id) throw new ConnectError(`datastore '${row.name}' was dropped during the upsert`, Code.NotFound);
    return now;
  }

  /**
   * vectorSearch asks the writer's ANN index for candidates and re-ranks them exactly here; a filter
   * that leaves fewer than `limit` asks for 4x more, up to store.annMaxK, then scans the filtered
   * records exactly. A store without a usable index (small, or its index being rebuilt) is scanned.
   */
  async function vectorSearch(row: StoreRow, query: Float32Array, conditions: Condition[], limit: number): Promise<Hit[]> {
    if (!row.dimension) return [];
    const w = await writer;
    for (let k = store.annK(limit, conditions); ; k *= 4) {
      if (k > store.annMaxK) return store.exactSearch(row, query, conditions, limit);
      const keys = await w.annSearch(row, query, k);
      if (!keys) return store.scanSearch(row, query, conditions, limit);
      const hits = store.rerank(row, keys, query, conditions, limit);
      if (hits.length >= limit || keys.length < k) return hits;
    }
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

  return {
    impl: {
      async createStore(req, ctx) {
        const accountId = manageOnly(await deps.auth.identify(ctx.requestHeader));
        checkStoreName(req.name);
        const row = await (await writer).createStore(accountId, req.name, req.embeddingModel);
        if (!row) throw new ConnectError(`datastore '${req.name}' already exists`, Code.AlreadyExists);
        return { store: storeMsg(row, 0) };
      },
      async listStores(_req, ctx) {
        const identity = await deps.auth.identify(ctx.requestHeader);
        let rows = store.listStores(requireAccount(identity));
        if (identity.kind === "run") rows = rows.filter((r) => identity.claims.datastores.some((d) => d.name === r.name));
        return { stores: rows.map((r) => storeMsg(r, store.count(r.id))) };
      },
      async deleteStore(req, ctx) {
        const accountId = manageOnly(await deps.auth.identify(ctx.requestHeader));
        const row = store.store(accountId, req.name);
        if (!row || !(await (await writer).dropStore(row.id)))
          throw new ConnectError(`datastore '${req.name}' does not exist`, Code.NotFound);
        return { name: req.name };
      },
      async upsertRecords(req, ctx) {
        const identity = await deps.auth.identify(ctx.requestHeader);
        const row = storeFor(identity, req.store, true);
        const { input, embedded } = await prepare(row, identity.accountId, req.records, 0, { dimension: row.dimension }, ctx);
        return { upserted: refused(await (await writer).upsert(stillThere(row).id, input)), embedded };
      },
      /**
       * upsertRecordsStream writes each part straight into the tables as it arrives, in one
       * transaction of the writer held from the first part to the end: all or nothing, and visible
       * to searches only once committed. The next part is read and checked while the writer writes
       * the previous one.
       */
      async upsertRecordsStream(requests, ctx) {
        const identity = await deps.auth.identify(ctx.requestHeader);
        const it = requests[Symbol.asyncIterator]();
        const first = await it.next();
        if (first.done) throw invalid("the stream sent no part; the first part must name the 'store'", "store");
        const asked = storeFor(identity, first.value.store, true);
        const w = await writer;
        return w.exclusive(async () => {
          const row = stillThere(asked);
          const dims = { dimension: row.dimension };
          let offset = 0;
          let embedded = 0;
          let inFlight: Promise<UpsertResult> | undefined;
          let open = true;
          await w.beginUpload(row.id);
          try {
            for (let part: IteratorResult<(typeof first)["value"]> = first; !part.done; part = await it.next()) {
              const prepared = await prepare(row, identity.accountId, part.value.records, offset, dims, ctx);
              if (inFlight) refused(await inFlight);
              inFlight = w.uploadPart(prepared.input);
              offset += part.value.records.length;
              embedded += prepared.embedded;
            }
            if (inFlight) refused(await inFlight);
            stillThere(row);
            const result = await w.commitUpload();
            open = false;
            return { upserted: refused(result), embedded };
          } finally {
            if (open) {
              // A refused part has rolled the upload back already; this makes sure, and waits for the writer.
              await inFlight?.catch(() => undefined);
              await w.rollbackUpload();
            }
          }
        });
      },
      async getRecords(req, ctx) {
        const row = storeFor(await deps.auth.identify(ctx.requestHeader), req.store, false);
        const rows = store.getRecords(row, req.ids);
        return {
          records: rows.map((r) => ({
            id: r.id,
            text: r.text,
            metadata: parseMetadata(r.metadata),
            vector: r.vector ? Array.from(r.vector) : [],
          })),
        };
      },
      async deleteRecords(req, ctx) {
        const row = storeFor(await deps.auth.identify(ctx.requestHeader), req.store, true);
        return { deleted: await (await writer).deleteRecords(row, req.ids) };
      },
      async search(req, ctx) {
        const identity = await deps.auth.identify(ctx.requestHeader);
        const row = storeFor(identity, req.store, false);
        const { limit, conditions } = checkSearch(req);
        let hits: Hit[];
        switch (req.mode) {
          case SearchMode.VECTOR:
            hits = await vectorSearch(row, await queryVector(row, identity.accountId, req.query, req.vector, ctx), conditions, limit);
            break;
          case SearchMode.HYBRID: {
            const depth = hybridDepth(limit);
            const vector = await queryVector(row, identity.accountId, req.query, req.vector, ctx);
            const fused = new Map<string, Hit>();
            for (const list of [
              store.keywordSearch(row.id, req.query, conditions, depth),
              await vectorSearch(row, vector, conditions, depth),
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
            hits = store.keywordSearch(row.id, req.query, conditions, limit);
        }
        return { records: hits.map((h) => ({ id: h.id, text: h.text, metadata: parseMetadata(h.metadata), score: h.score })) };
      },
    },
    async close() {
      await (await writer.catch(() => undefined))?.close();
      store.close();
    },
  };
}
