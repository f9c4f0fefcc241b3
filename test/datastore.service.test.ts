// The Datastore's rules in process: its handlers over an in-memory store (a fresh PostgreSQL
// database under SHAKER_TEST_DIALECT=postgresql), called through createRouterTransport (no port, no
// edge, no other service). Its peers are faked: API keys are a table of this file, and the
// ModelProxy is a small Embeddings handler that embeds by counting letters and records how it was
// called. The rules themselves are in datastore-rules.test.ts; the
// REST edge's view of them is in datastore.test.ts.
import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeEach, describe, expect, it } from "vitest";
import { DatastoreService, SearchMode, type UpsertRecordsStreamRequestSchema } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { analyzeFrom } from "../services/datastore/pg-store.js";
import { createDatastoreService } from "../services/datastore/service.js";
import { createDatastoreStore, storeRows } from "../services/datastore/store.js";
import { createAuth, headers, type RunClaims } from "../services/shared/auth.js";
import { errorMetadata } from "../services/shared/errors.js";
import { testDialect, testStoreLocation } from "./databases.js";

const serviceSecret = "datastore-service-test-secret";
const keys: Record<string, string> = { "key-alice": "acct-alice", "key-bob": "acct-bob" };
const auth = createAuth({
  serviceSecret,
  authenticateKey: async (key) => (keys[key] ? { accountId: keys[key], admin: false, keyId: `id-${key}` } : undefined),
});

/** The fake ModelProxy's embedding: how often each of four letters occurs (a text without them embeds as zeros). */
const letters = ["a", "e", "o", "s"];
const embedText = (text: string) => letters.map((l) => text.split(l).length - 1);

/** embedCalls are the fake ModelProxy's Embeddings calls: the texts, the model asked for and the account it was asked for. */
const embedCalls: { input: string[]; model: unknown; account: string | null; service: boolean }[] = [];
/** embedAnswer, when set, replaces the fake's answer (to answer too few vectors, say). */
let embedAnswer: ((input: string[]) => JsonObject) | undefined;

const modelproxy = createClient(
  ModelProxyService,
  createRouterTransport((router) =>
    router.service(ModelProxyService, {
      async embeddings(req, ctx) {
        const input = req.body?.input as string[];
        embedCalls.push({
          input,
          model: req.body?.model,
          account: ctx.requestHeader.get(headers.account),
          service: ctx.requestHeader.get(headers.serviceToken) === serviceSecret,
        });
        // Answered out of order: the Datastore must place vectors by their index.
        const data = input.map((text, index) => ({ index, embedding: embedText(text) })).reverse();
        return { response: embedAnswer ? embedAnswer(input) : { data } };
      },
    }),
  ),
);

const location = await testStoreLocation();
const store = await createDatastoreStore(location.location);
const datastore = createDatastoreService({ store, auth, clients: { modelproxy } });
const client = createClient(DatastoreService, createRouterTransport(datastore.routes));

afterAll(async () => {
  await datastore.close();
  await store.close();
  await location.release();
});

beforeEach(() => {
  embedCalls.length = 0;
  embedAnswer = undefined;
});

const alice: CallOptions = { headers: { authorization: "Bearer key-alice" } };
const bob: CallOptions = { headers: { authorization: "Bearer key-bob" } };

/** asRun calls with the token the Executor would give a run of a workflow bound to `datastores`. */
function asRun(datastores: RunClaims["datastores"], accountId = "acct-alice"): CallOptions {
  const claims: RunClaims = {
    account: accountId,
    workflow: "flow",
    version: "1.0.0",
    versionId: "ver-1",
    run: "run-1",
    session: "sess",
    datastores,
    depth: 0,
    exp: Date.now() + 60_000,
  };
  return { headers: { authorization: `Bearer ${auth.mintRunToken(claims)}` } };
}

/** refusal is the code, message and field of the error a call fails with. */
async function refusal(call: Promise<unknown>): Promise<{ code: Code; message: string; param: string | null }> {
  try {
    await call;
  } catch (e) {
    const ce = ConnectError.from(e);
    return { code: ce.code, message: ce.rawMessage, param: ce.metadata.get(errorMetadata.param) };
  }
  throw new Error("expected a refusal, got none");
}

const invalid = (message: string, param: string) => ({ code: Code.InvalidArgument, message, param });

let storeCount = 0;
/** newStore creates a store of alice's with a fresh name. */
async function newStore(embeddingModel = ""): Promise<string> {
  const name = `store-${++storeCount}`;
  await client.createStore({ name, embeddingModel }, alice);
  return name;
}

/** parts streams the messages of an UpsertRecordsStream call. */
async function* parts(
  ...items: MessageInitShape<typeof UpsertRecordsStreamRequestSchema>[]
): AsyncGenerator<MessageInitShape<typeof UpsertRecordsStreamRequestSchema>> {
  yield* items;
}

describe("stores", () => {
  it("creates, lists and drops a store of the caller's account", async () => {
    const created = await client.createStore({ name: "kb", embeddingModel: "local-embed" }, alice);
    expect(created.store).toMatchObject({ name: "kb", embeddingModel: "local-embed", dimension: 0, recordCount: 0 });
    expect((await client.listStores({}, alice)).stores.map((s) => s.name)).toContain("kb");
    expect((await client.listStores({}, bob)).stores.map((s) => s.name)).not.toContain("kb");
    expect(await refusal(client.createStore({ name: "kb" }, alice))).toMatchObject({ code: Code.AlreadyExists });
    // Another account may have a store of the same name.
    await client.createStore({ name: "kb" }, bob);
    expect((await client.deleteStore({ name: "kb" }, alice)).name).toBe("kb");
    expect(await refusal(client.deleteStore({ name: "kb" }, alice))).toMatchObject({
      code: Code.NotFound,
      message: "datastore 'kb' does not exist",
    });
    expect((await client.listStores({}, bob)).stores.map((s) => s.name)).toContain("kb");
  });

  it("refuses a store name that is not a name", async () => {
    for (const name of ["", "KB", "a b", "-kb"]) {
      expect(await refusal(client.createStore({ name }, alice))).toEqual(invalid("'name' must match ^[a-z0-9][a-z0-9_-]{0,63}$", "name"));
    }
  });

  it("refuses callers without a key, and runs that would create or drop stores", async () => {
    expect((await refusal(client.listStores({}))).code).toBe(Code.Unauthenticated);
    expect((await refusal(client.listStores({}, { headers: { authorization: "Bearer nope" } }))).code).toBe(Code.Unauthenticated);
    const run = asRun([{ name: "any", write: true }]);
    for (const call of [client.createStore({ name: "x" }, run), client.deleteStore({ name: "x" }, run)]) {
      expect(await refusal(call)).toMatchObject({ code: Code.PermissionDenied, message: "a workflow cannot create or drop datastores" });
    }
  });

  it("a run lists and reaches only the stores its workflow is bound to, writing only where bound to write", async () => {
    const bound = await newStore();
    const other = await newStore();
    const reader = asRun([{ name: bound, write: false }]);
    expect((await client.listStores({}, reader)).stores.map((s) => s.name)).toEqual([bound]);
    expect(await refusal(client.getRecords({ store: other, ids: ["a"] }, reader))).toMatchObject({
      code: Code.PermissionDenied,
      message: `workflow 'flow' is not bound to datastore '${other}'`,
    });
    expect(await refusal(client.upsertRecords({ store: bound, records: [{ id: "a", vector: [1] }] }, reader))).toMatchObject({
      code: Code.PermissionDenied,
      message: `workflow 'flow' may only read datastore '${bound}'; bind it with write: true to upsert`,
    });
    const writer = asRun([{ name: bound, write: true }]);
    expect((await client.upsertRecords({ store: bound, records: [{ id: "a", vector: [1] }] }, writer)).upserted).toBe(1);
    expect((await client.getRecords({ store: bound, ids: ["a"] }, reader)).records.map((r) => r.id)).toEqual(["a"]);
  });
});

describe("store look-ups (kept in memory on SQLite)", () => {
  it("finds a store dropped and created again as the new one, and its first vector's dimension at once", async () => {
    await client.createStore({ name: "again" }, alice);
    await client.upsertRecords({ store: "again", records: [{ id: "old", text: "old words" }] }, alice);
    expect((await client.search({ store: "again", query: "words" }, alice)).records.map((r) => r.id)).toEqual(["old"]);
    await client.deleteStore({ name: "again" }, alice);
    expect(await refusal(client.search({ store: "again", query: "words" }, alice))).toMatchObject({ code: Code.NotFound });
    await client.createStore({ name: "again" }, alice);
    // Looked up before and after its first vector: a vector search finds it once the upsert answered.
    expect((await client.search({ store: "again", query: "words" }, alice)).records).toEqual([]);
    await client.upsertRecords({ store: "again", records: [{ id: "new", text: "new words", vector: [1, 0, 0, 0] }] }, alice);
    const hits = await client.search({ store: "again", mode: SearchMode.VECTOR, vector: [1, 0, 0, 0] }, alice);
    expect(hits.records.map((r) => r.id)).toEqual(["new"]);
    await client.deleteStore({ name: "again" }, alice);
  });

  it("keeps what it found until a write ends, and not a look-up that began before the write ended", async () => {
    const row = { id: 1, accountId: "a", name: "s", embeddingModel: "", dimension: 0, createdAt: 0 };
    let calls = 0;
    let answer: () => Promise<typeof row | undefined> = async () => row;
    const rows = storeRows(async (_account, name) => {
      calls++;
      return name === "s" ? answer() : undefined;
    });
    expect(await rows.store("a", "s")).toBe(row);
    expect(await rows.store("a", "s")).toBe(row);
    expect(calls).toBe(1);
    // Not found is not kept: the store may be created.
    expect(await rows.store("a", "other")).toBeUndefined();
    expect(await rows.store("a", "other")).toBeUndefined();
    expect(calls).toBe(3);
    // A write forgets them when it ends, failed or not.
    await rows.after(Promise.resolve());
    await rows.store("a", "s");
    expect(calls).toBe(4);
    await expect(rows.after(Promise.reject(new Error("refused")))).rejects.toThrow("refused");
    await rows.store("a", "s");
    expect(calls).toBe(5);
    // A look-up answered after a write ended, but begun before, is not kept (it may hold the row as it was).
    let release: () => void = () => {};
    answer = () => new Promise((resolve) => (release = () => resolve(row)));
    await rows.after(Promise.resolve());
    const pending = rows.store("a", "s");
    await rows.after(Promise.resolve());
    release();
    await pending;
    answer = async () => row;
    await rows.store("a", "s");
    expect(calls).toBe(7);
  });
});

describe("records", () => {
  it("refuses a request naming no store, and a store of another account as not existing", async () => {
    expect(await refusal(client.upsertRecords({ store: "", records: [] }, alice))).toEqual(invalid("'store' is required", "store"));
    const name = await newStore();
    expect(await refusal(client.getRecords({ store: name, ids: ["a"] }, bob))).toMatchObject({
      code: Code.NotFound,
      message: `datastore '${name}' does not exist`,
    });
  });

  it("stores records with their vectors, metadata and text, and replaces them by id", async () => {
    const name = await newStore();
    const resp = await client.upsertRecords(
      {
        store: name,
        records: [
          { id: "a", text: "first", vector: [1, 0, 0], metadata: { n: 1 } },
          { id: "b", text: "second", vector: [0, 1, 0] },
        ],
      },
      alice,
    );
    expect(resp).toMatchObject({ upserted: 2, embedded: 0 });
    await client.upsertRecords({ store: name, records: [{ id: "a", text: "again", vector: [0, 0, 1] }] }, alice);
    const got = await client.getRecords({ store: name, ids: ["a", "b", "none"] }, alice);
    expect(got.records.map((r) => [r.id, r.text, r.vector, r.metadata])).toEqual([
      ["a", "again", [0, 0, 1], {}],
      ["b", "second", [0, 1, 0], {}],
    ]);
    const [store] = (await client.listStores({}, alice)).stores.filter((s) => s.name === name);
    expect(store).toMatchObject({ dimension: 3, recordCount: 2 });
    expect((await client.deleteRecords({ store: name, ids: ["a", "none"] }, alice)).deleted).toBe(1);
    expect(embedCalls).toEqual([]);
  });

  it("refuses a record without an id or with a non-finite vector value, naming it", async () => {
    const name = await newStore();
    expect(await refusal(client.upsertRecords({ store: name, records: [{ id: "a", vector: [1] }, { id: "" }] }, alice))).toEqual(
      invalid("records[1]: missing id", "records[1].id"),
    );
    expect(await refusal(client.upsertRecords({ store: name, records: [{ id: "a", vector: [1, Number.NaN] }] }, alice))).toEqual(
      invalid("records[0]: vector holds a value that is not a finite number", "records[0].vector"),
    );
    // Nothing of a refused request is kept.
    expect((await client.getRecords({ store: name, ids: ["a"] }, alice)).records).toEqual([]);
  });

  it("refuses the NUL character in any text it would keep or look up, naming the field, on either database", async () => {
    const name = await newStore();
    const nul = "must not contain the NUL character (\\u0000)";
    const upsert = (record: object) => client.upsertRecords({ store: name, records: [{ id: "a", vector: [1] }, record] }, alice);
    expect(await refusal(upsert({ id: "b\0", vector: [1] }))).toEqual(invalid(`records[1]: id ${nul}`, "records[1].id"));
    expect(await refusal(upsert({ id: "b", text: "x\0y", vector: [1] }))).toEqual(invalid(`records[1]: text ${nul}`, "records[1].text"));
    expect(await refusal(upsert({ id: "b", metadata: { k: ["\0"] }, vector: [1] }))).toEqual(
      invalid(`records[1]: metadata ${nul}`, "records[1].metadata"),
    );
    expect(await refusal(upsert({ id: "b", metadata: { "k\0": 1 }, vector: [1] }))).toEqual(
      invalid(`records[1]: metadata ${nul}`, "records[1].metadata"),
    );
    expect((await client.getRecords({ store: name, ids: ["a"] }, alice)).records).toEqual([]);
    expect(await refusal(client.getRecords({ store: name, ids: ["a", "\0"] }, alice))).toEqual(invalid(`'ids[1]' ${nul}`, "ids[1]"));
    expect(await refusal(client.deleteRecords({ store: name, ids: ["\0"] }, alice))).toEqual(invalid(`'ids[0]' ${nul}`, "ids[0]"));
    expect(await refusal(client.search({ store: name, query: "a", filter: { k: "\0" } }, alice))).toEqual(
      invalid(`filter 'k' ${nul}`, "filter"),
    );
    expect(await refusal(client.createStore({ name: "nul", embeddingModel: "m\0" }, alice))).toEqual(
      invalid(`'embedding_model' ${nul}`, "embedding_model"),
    );
    expect(await refusal(client.getRecords({ store: "a\0", ids: ["a"] }, alice))).toMatchObject({ code: Code.NotFound });
  });

  it.skipIf(testDialect !== "postgresql")("refuses on PostgreSQL a text with more words than its text search indexes", async () => {
    const name = await newStore();
    const text = Array.from({ length: 60_000 }, (_, i) => `w${i.toString(36).padStart(30, "x")}`).join(" ");
    expect(
      await refusal(
        client.upsertRecords(
          {
            store: name,
            records: [
              { id: "a", vector: [1] },
              { id: "b", text, vector: [1] },
            ],
          },
          alice,
        ),
      ),
    ).toEqual(
      invalid("records[0..1]: a text holds more words than PostgreSQL's text search indexes (its tsvector passes 1 MiB)", "records"),
    );
  });

  it("refuses vectors of another dimension than the request's first, or the store's", async () => {
    const name = await newStore();
    expect(
      await refusal(
        client.upsertRecords(
          {
            store: name,
            records: [
              { id: "a", vector: [1, 2] },
              { id: "b", vector: [1, 2, 3] },
            ],
          },
          alice,
        ),
      ),
    ).toEqual(invalid("records[1]: vector has 3 dimensions; the store's vectors have 2", "records[1].vector"));
    await client.upsertRecords({ store: name, records: [{ id: "a", vector: [1, 2] }] }, alice);
    expect(await refusal(client.upsertRecords({ store: name, records: [{ id: "b", vector: [1] }] }, alice))).toEqual(
      invalid("records[0]: vector has 1 dimensions; the store's vectors have 2", "records[0].vector"),
    );
  });

  it("embeds records without a vector through the ModelProxy, for the caller's account, 64 texts a call", async () => {
    const name = await newStore("tiny-embed");
    const records = Array.from({ length: 70 }, (_, i) => ({ id: `r${i}`, text: i === 3 ? "sea sea" : `record ${i}` }));
    records.push({ id: "given", text: "", vector: [9, 9, 9, 9] } as (typeof records)[number]);
    const resp = await client.upsertRecords({ store: name, records }, alice);
    expect(resp).toMatchObject({ upserted: 71, embedded: 70 });
    expect(embedCalls.map((c) => c.input.length)).toEqual([64, 6]);
    expect(embedCalls.every((c) => c.model === "tiny-embed" && c.account === "acct-alice" && c.service)).toBe(true);
    const got = await client.getRecords({ store: name, ids: ["r3", "given"] }, alice);
    expect(got.records.map((r) => r.vector)).toEqual([embedText("sea sea"), [9, 9, 9, 9]]);
  });

  it("asks for no model when the store names none, and refuses an embedding of the wrong dimension", async () => {
    const name = await newStore();
    await client.upsertRecords({ store: name, records: [{ id: "a", vector: [1, 2] }] }, alice);
    expect(await refusal(client.upsertRecords({ store: name, records: [{ id: "b", text: "sea" }] }, alice))).toEqual(
      invalid("records[0]: vector has 4 dimensions; the store's vectors have 2", "records[0].vector"),
    );
    expect(embedCalls.map((c) => c.model)).toEqual([undefined]);
  });

  it("fails as Internal when the ModelProxy answers fewer vectors than texts, or an entry without one", async () => {
    const name = await newStore();
    embedAnswer = () => ({ data: [] });
    expect(await refusal(client.upsertRecords({ store: name, records: [{ id: "a", text: "x" }] }, alice))).toMatchObject({
      code: Code.Internal,
      message: "the embedding model answered 0 vectors for 1 texts",
    });
    embedAnswer = () => ({ data: [{ index: 0 }] });
    expect(await refusal(client.upsertRecords({ store: name, records: [{ id: "a", text: "x" }] }, alice))).toMatchObject({
      code: Code.Internal,
      message: "the embedding model answered an entry without an embedding",
    });
  });

  it("a streamed upsert counts records across its parts, and keeps none of a refused stream", async () => {
    const name = await newStore();
    const first = { store: name, records: Array.from({ length: 3 }, (_, i) => ({ id: `s${i}`, vector: [i, 1, 0, 0] })) };
    const resp = await client.upsertRecordsStream(parts(first, { records: [{ id: "t", text: "sea" }] }), alice);
    expect(resp).toMatchObject({ upserted: 4, embedded: 1 });
    expect(
      await refusal(client.upsertRecordsStream(parts(first, { records: [{ id: "u", vector: [1, 2, 3, 4] }, { id: "" }] }), alice)),
    ).toEqual(invalid("records[4]: missing id", "records[4].id"));
    expect(await refusal(client.upsertRecordsStream(parts(first, { records: [{ id: "u", vector: [1, 2, 3] }] }), alice))).toEqual(
      invalid("records[3]: vector has 3 dimensions; the store's vectors have 4", "records[3].vector"),
    );
    expect((await client.getRecords({ store: name, ids: ["u"] }, alice)).records).toEqual([]);
  });

  it("a stream with no part names no store", async () => {
    expect(await refusal(client.upsertRecordsStream(parts(), alice))).toEqual(
      invalid("the stream sent no part; the first part must name the 'store'", "store"),
    );
  });

  // The planner needs statistics of a bulk load for its first search to use the GIN index alone.
  it.skipIf(testDialect !== "postgresql")("gives PostgreSQL's planner statistics after a write of many records", async () => {
    const row = (await store.createStore("acct-stats", "bulk", ""))!;
    const db = new pg.Client({ connectionString: location.location });
    await db.connect();
    try {
      const analyzed = async () =>
        (await db.query("SELECT reltuples FROM pg_class WHERE oid = 'datastore.records'::regclass")).rows[0].reltuples as number;
      const few = [{ id: "one", text: "one record", metadata: "{}", vector: new Float32Array([1, 0, 0, 0]) }];
      await store.upsert(row.id, few);
      const before = await analyzed();
      const many = Array.from({ length: analyzeFrom }, (_, i) => ({ ...few[0], id: `r${i}` }));
      await store.upsert(row.id, many);
      expect(await analyzed()).toBeGreaterThanOrEqual(analyzeFrom);
      expect(before).toBeLessThan(analyzeFrom);
    } finally {
      await db.end();
    }
  });
});

describe("search", () => {
  let name: string;
  const docs = [
    { id: "bread", text: "bake bread in the oven", metadata: { kind: "food", price: 3 } },
    { id: "sea", text: "the sea and the seas", metadata: { kind: "place", price: 0 } },
    { id: "oats", text: "oats soaked as porridge", metadata: { kind: "food", price: 1 } },
  ];

  beforeEach(async () => {
    name ??= await newStore();
    await client.upsertRecords({ store: name, records: docs }, alice);
    embedCalls.length = 0;
  });

  const search = (fields: { mode?: SearchMode; query?: string; vector?: number[]; limit?: number; filter?: JsonObject }) =>
    client.search({ store: name, ...fields }, alice);

  it("finds by keyword, by default", async () => {
    expect((await search({ query: "bread" })).records.map((r) => r.id)).toEqual(["bread"]);
    expect(embedCalls).toEqual([]);
  });

  it("finds by vector, embedding the query when no vector is given", async () => {
    const byQuery = await search({ mode: SearchMode.VECTOR, query: "seas", limit: 1 });
    expect(byQuery.records.map((r) => r.id)).toEqual(["sea"]);
    expect(embedCalls.map((c) => c.input)).toEqual([["seas"]]);
    const byVector = await search({ mode: SearchMode.VECTOR, vector: embedText("oats soaked as porridge"), limit: 1 });
    expect(byVector.records.map((r) => r.id)).toEqual(["oats"]);
  });

  it("fuses keyword and vector rankings in a hybrid search", async () => {
    const hits = (await search({ mode: SearchMode.HYBRID, query: "oven" })).records.map((r) => r.id);
    expect(hits[0]).toBe("bread");
    expect(hits).toHaveLength(3);
  });

  it("filters by metadata, and bounds the limit", async () => {
    const food = await search({ mode: SearchMode.VECTOR, vector: [1, 1, 1, 1], filter: { kind: "food", price: { $gte: 2 } } });
    expect(food.records.map((r) => r.id)).toEqual(["bread"]);
    expect((await search({ mode: SearchMode.VECTOR, vector: [1, 1, 1, 1], limit: 2 })).records).toHaveLength(2);
    for (const limit of [-1, 1001]) {
      expect(await refusal(search({ query: "bread", limit }))).toEqual(invalid("'limit' must be between 1 and 1000", "limit"));
    }
    expect(await refusal(search({ query: "bread", filter: { kind: { $in: "food" } } }))).toEqual(
      invalid("filter 'kind.$in' must be an array", "filter"),
    );
  });

  it("refuses a search without what its mode searches with, or a vector of another dimension", async () => {
    expect(await refusal(search({}))).toEqual(invalid("keyword search needs a 'query'", "query"));
    expect(await refusal(search({ mode: SearchMode.VECTOR }))).toEqual(
      invalid("vector search needs 'vector' or a 'query' to embed", "vector"),
    );
    expect(await refusal(search({ mode: SearchMode.HYBRID }))).toEqual(
      invalid("hybrid search needs a 'query', a 'vector' or both", "query"),
    );
    expect(await refusal(search({ mode: SearchMode.VECTOR, vector: [1, 2] }))).toEqual(
      invalid("'vector' has 2 dimensions; the store's vectors have 4", "vector"),
    );
    expect(embedCalls).toEqual([]);
  });
});
