import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DatastoreService } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { vectorForms } from "../services/datastore/rules.js";
import { startTestServer, type TestServer } from "./helpers.js";

/** hashed embeds text as the ModelProxy's local embedder does: feature hashing of tokens, L2-normalised. */
function hashed(text: string, dims = 384): number[] {
  const v = new Array<number>(dims).fill(0);
  for (const token of text.toLowerCase().match(/[a-z0-9]+/g) ?? []) {
    let h = 2166136261;
    for (const ch of token) h = Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0;
    v[h % dims] += h & 0x80000000 ? -1 : 1;
  }
  const norm = Math.hypot(...v) || 1;
  return v.map((x) => x / norm);
}

const corpus = [
  {
    id: "bread",
    text: "How to bake sourdough bread: feed the starter, knead the dough, proof overnight and bake in a hot oven.",
    metadata: { category: "food", price: 12, tags: "baking" },
  },
  {
    id: "pasta",
    text: "Fresh egg pasta is rolled thin, cut into tagliatelle and boiled for two minutes.",
    metadata: { category: "food", price: 9 },
  },
  {
    id: "bike",
    text: "Fixing a flat bicycle tyre: remove the wheel, find the puncture, patch the inner tube.",
    metadata: { category: "repair", price: 5 },
  },
  { id: "sql", text: "SQLite full text search with FTS5 ranks documents by BM25 relevance.", metadata: { category: "software", price: 0 } },
  {
    id: "garden",
    text: "Tomatoes in the garden need sun, deep watering and support stakes as they grow.",
    metadata: { category: "garden", price: 20 },
  },
  {
    id: "coffee",
    text: "Brewing espresso coffee: grind fine, tamp evenly, extract for twenty five seconds.",
    metadata: { category: "food", price: 30, active: true },
  },
  {
    id: "tax",
    text: "Filing an income tax return: gather receipts, declare income, claim deductions.",
    metadata: { category: "finance", price: 50 },
  },
  {
    id: "cake",
    text: "A simple sponge cake: whisk eggs and sugar, fold in flour, bake for twenty minutes in the oven.",
    metadata: { category: "food", price: 15, active: false },
  },
];
const withVectors = corpus.map((r) => ({ ...r, vector: hashed(r.text) }));

describe("datastore over REST and RPC", () => {
  let server: TestServer;
  const ids = (body: any) => (body.data as { id: string }[]).map((h) => h.id);
  const search = (store: string, body: unknown) => server.request("POST", `/v1/datastores/${store}/search`, body);
  const count = async (store: string) => {
    const res = await server.request("GET", "/v1/datastores");
    return (res.body.data as any[]).find((s) => s.name === store)?.record_count as number;
  };

  beforeAll(async () => {
    server = await startTestServer();
    expect((await server.request("POST", "/v1/datastores", { name: "kb" })).status).toBe(201);
    const res = await server.request("POST", "/v1/datastores/kb/records", { records: withVectors });
    expect(res.status).toBe(200);
    expect(res.body.data).toEqual({ upserted: corpus.length, embedded: 0 });
  });
  afterAll(() => server.close());

  it("creates, lists and refuses duplicate or badly named stores", async () => {
    const list = await server.request("GET", "/v1/datastores");
    expect(list.body.data).toEqual([expect.objectContaining({ name: "kb", dimension: 384, record_count: corpus.length })]);
    expect((await server.request("POST", "/v1/datastores", { name: "kb" })).status).toBe(409);
    const bad = await server.request("POST", "/v1/datastores", { name: "Bad Name" });
    expect(bad.status).toBe(400);
    expect(bad.body.error.param).toBe("name");
    expect((await search("nope", { query: "x" })).status).toBe(404);
  });

  it("ranks the obviously right record first for keyword, vector and hybrid search", async () => {
    const keyword = await search("kb", { query: "sourdough bread starter" });
    expect(keyword.status).toBe(200);
    expect(ids(keyword.body)[0]).toBe("bread");
    expect(keyword.body.data[0]).toMatchObject({ text: corpus[0].text, metadata: corpus[0].metadata });
    expect(keyword.body.data[0].score).toBeGreaterThan(0);

    const query = "patch a puncture in my bicycle tyre";
    const vector = await search("kb", { mode: "vector", vector: hashed(query), limit: 3 });
    expect(ids(vector.body)).toHaveLength(3);
    expect(ids(vector.body)[0]).toBe("bike");
    expect(vector.body.data[0].score).toBeGreaterThan(vector.body.data[1].score);

    const hybrid = await search("kb", { mode: "hybrid", query: "espresso grind", vector: hashed("espresso coffee grind"), limit: 5 });
    expect(ids(hybrid.body)[0]).toBe("coffee");
    expect(keyword.body.data.length).toBeLessThanOrEqual(10);
  });

  it("applies metadata filters inside keyword and vector queries", async () => {
    // "bake" matches bread and cake; "oven" too. Filters narrow by category, ranges, $in and $ne.
    const food = await search("kb", { query: "bake oven minutes", filter: { category: "food" } });
    expect(ids(food.body).sort()).toEqual(["bread", "cake", "pasta"].sort());
    const cheap = await search("kb", { query: "bake oven minutes", filter: { price: { $gte: 10, $lt: 15 } } });
    expect(ids(cheap.body)).toEqual(["bread"]);
    const inList = await search("kb", { mode: "vector", vector: hashed("anything"), filter: { category: { $in: ["repair", "finance"] } } });
    expect(ids(inList.body).sort()).toEqual(["bike", "tax"]);
    const notFood = await search("kb", { mode: "vector", vector: hashed("bake"), filter: { category: { $ne: "food" } }, limit: 100 });
    expect(ids(notFood.body).sort()).toEqual(["bike", "garden", "sql", "tax"]);
    const active = await search("kb", { mode: "vector", vector: hashed("bake"), filter: { active: true } });
    expect(ids(active.body)).toEqual(["coffee"]);
    const hybrid = await search("kb", { mode: "hybrid", query: "bake", vector: hashed("bake"), filter: { price: { $gt: 12 } } });
    expect(ids(hybrid.body)).toContain("cake");
    expect(ids(hybrid.body)).not.toContain("bread");
    const bad = await search("kb", { query: "bake", filter: { price: { $between: [1, 2] } } });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain("$between");
    const quoted = await search("kb", { query: "bake", filter: { 'a"b': 1 } });
    expect(quoted.status).toBe(400);
    expect(quoted.body.error.param).toBe("filter");
  });

  it("returns limit hits for a selective filter even when they are far from the query", async () => {
    await server.request("POST", "/v1/datastores", { name: "many" });
    // 6,000 records; the 12 tagged "rare" point away from the query, so KNN alone would miss them.
    const lines: string[] = [];
    for (let i = 0; i < 6000; i++) {
      const rare = i % 500 === 7;
      lines.push(
        JSON.stringify({
          id: `r${i}`,
          text: `record ${i}`,
          metadata: { tag: rare ? "rare" : "common", n: i },
          vector: rare ? [-1, 0, 0, (i % 7) / 10] : [1, (i % 13) / 13, 0, 0],
        }),
      );
    }
    const up = await server.request("POST", "/v1/datastores/many/records", lines.join("\n"), { "content-type": "application/x-ndjson" });
    expect(up.status).toBe(200);
    expect(up.body.data.upserted).toBe(6000);
    const res = await search("many", { mode: "vector", vector: [1, 0, 0, 0], filter: { tag: "rare" }, limit: 10 });
    expect(res.body.data).toHaveLength(10);
    expect(res.body.data.every((h: any) => h.metadata.tag === "rare")).toBe(true);
    const ranged = await search("many", { mode: "vector", vector: [1, 0, 0, 0], filter: { n: { $gte: 100, $lt: 103 } }, limit: 10 });
    expect(ids(ranged.body).sort()).toEqual(["r100", "r101", "r102"]);
  });

  it("ranks by exact cosine over binary-quantised KNN candidates in a store past the exact-scan size", async () => {
    await server.request("POST", "/v1/datastores", { name: "wide" });
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
    const records = Array.from({ length: 10_200 }, (_, i) => ({
      id: `w${i}`,
      text: `wide ${i}`,
      metadata: { even: i % 2 === 0 },
      vector: Array.from({ length: 64 }, rand),
    }));
    const ndjson = records.map((r) => JSON.stringify(r)).join("\n");
    expect((await server.request("POST", "/v1/datastores/wide/records", ndjson, { "content-type": "application/x-ndjson" })).status).toBe(
      200,
    );
    const cosine = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0) / Math.hypot(...a) / Math.hypot(...b);
    const query = records[123].vector.map((x) => x + rand() * 0.05);
    const res = await search("wide", { mode: "vector", vector: query, limit: 5 });
    expect(ids(res.body)[0]).toBe("w123");
    expect(res.body.data[0].score).toBeCloseTo(cosine(query, records[123].vector), 4);
    const odd = await search("wide", { mode: "vector", vector: query, limit: 20, filter: { even: false } });
    expect(odd.body.data).toHaveLength(20);
    expect(odd.body.data.every((h: any) => h.metadata.even === false)).toBe(true);
    const scores = odd.body.data.map((h: any) => h.score);
    expect([...scores].sort((a, b) => b - a)).toEqual(scores);
  });

  it("replaces records on update and removes them from every index on delete", async () => {
    await server.request("POST", "/v1/datastores", { name: "edit" });
    await server.request("POST", "/v1/datastores/edit/records", { records: withVectors });
    const up = await server.request("POST", "/v1/datastores/edit/records", {
      records: [
        {
          id: "bread",
          text: "Carbonara uses guanciale and pecorino.",
          metadata: { category: "pasta" },
          vector: hashed("carbonara guanciale"),
        },
      ],
    });
    expect(up.status).toBe(200);
    const got = await server.request("GET", "/v1/datastores/edit/records/bread");
    expect(got.body.data).toMatchObject({ id: "bread", text: "Carbonara uses guanciale and pecorino.", metadata: { category: "pasta" } });
    expect(got.body.data.vector[0]).toBeCloseTo(hashed("carbonara guanciale")[0], 5);
    expect(ids((await search("edit", { query: "sourdough" })).body)).toEqual([]);
    expect(ids((await search("edit", { query: "guanciale" })).body)).toEqual(["bread"]);
    expect(ids((await search("edit", { mode: "vector", vector: hashed("carbonara guanciale"), limit: 1 })).body)).toEqual(["bread"]);
    expect(ids((await search("edit", { query: "bake", filter: { category: "food" } })).body)).toEqual(["cake"]);
    expect(await count("edit")).toBe(corpus.length);

    expect((await server.request("DELETE", "/v1/datastores/edit/records/bike")).status).toBe(200);
    expect((await server.request("GET", "/v1/datastores/edit/records/bike")).status).toBe(404);
    expect(ids((await search("edit", { query: "bicycle puncture" })).body)).toEqual([]);
    expect(ids((await search("edit", { mode: "vector", vector: hashed(corpus[2].text), limit: 100 })).body)).not.toContain("bike");
    expect(await count("edit")).toBe(corpus.length - 1);
    expect((await server.request("DELETE", "/v1/datastores/edit/records/bike")).status).toBe(404);

    expect((await server.request("DELETE", "/v1/datastores/edit")).status).toBe(200);
    expect((await search("edit", { query: "bake" })).status).toBe(404);
    expect(await count("edit")).toBeUndefined();
  });

  it("takes vectors as the base64 of their float32s, in uploads and searches, as written-out numbers", async () => {
    const b64 = (v: number[]) => Buffer.from(new Float32Array(v).buffer).toString("base64");
    expect((await server.request("POST", "/v1/datastores", { name: "packed" })).status).toBe(201);
    const ndjson = withVectors.map((r) => JSON.stringify({ ...r, vector: b64(r.vector) })).join("\n");
    const up = await server.request("POST", "/v1/datastores/packed/records", ndjson, { "content-type": "application/x-ndjson" });
    expect(up.status).toBe(200);
    expect(up.body.data).toMatchObject({ upserted: withVectors.length, embedded: 0 });
    const stored = await server.request("GET", "/v1/datastores/packed/records/bike");
    expect(stored.body.data.vector).toEqual(Array.from(new Float32Array(hashed(corpus[2].text))));
    const query = hashed("patch a puncture in my bicycle tyre");
    const packed = await search("packed", { mode: "vector", vector: b64(query), limit: 3 });
    const plain = await search("kb", { mode: "vector", vector: query, limit: 3 });
    expect(packed.status).toBe(200);
    expect(ids(packed.body)[0]).toBe("bike");
    expect(packed.body.data).toEqual(plain.body.data);
    const bad = await search("packed", { mode: "vector", vector: "not base64!" });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatchObject({ message: `'vector' must be ${vectorForms}`, param: "vector" });
  });

  it("gets many records in the order asked over RPC, skipping absent ids", async () => {
    const client = createClient(DatastoreService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const headers = { authorization: `Bearer ${server.apiKey}` };
    const resp = await client.getRecords({ store: "kb", ids: ["tax", "missing", "bread"] }, { headers });
    expect(resp.records.map((r) => r.id)).toEqual(["tax", "bread"]);
    expect(resp.records[1].metadata).toEqual(corpus[0].metadata);
    const deleted = await client.deleteRecords({ store: "kb", ids: ["missing"] }, { headers });
    expect(deleted.deleted).toBe(0);
  });

  it("refuses bad records with 400 naming the index and stores nothing of the request", async () => {
    const before = await count("kb");
    const good = (id: string) => ({ id, text: "fine", vector: hashed(id) });
    const cases: [unknown[], string, string][] = [
      [[good("n1"), { text: "no id", vector: hashed("x") }], "records[1]: missing id", "records[1].id"],
      [
        [good("n1"), good("n2"), { id: "short", text: "x", vector: [1, 2, 3] }],
        "records[2]: vector has 3 dimensions; the store's vectors have 384",
        "records[2].vector",
      ],
      [
        [good("n1"), { id: "m", text: "x", metadata: [1, 2], vector: hashed("m") }],
        "records[1]: metadata must be a JSON object",
        "records[1].metadata",
      ],
      [[{ id: "m", text: "x", metadata: "tag", vector: hashed("m") }], "records[0]: metadata must be a JSON object", "records[0].metadata"],
      [[{ id: "v", vector: [1, "a"] }], `records[0]: vector must be ${vectorForms}`, "records[0].vector"],
      [[{ id: "v", vector: "AAAA-_AA" }], `records[0]: vector must be ${vectorForms}`, "records[0].vector"],
      // Finite, but kept as a float32 it would be Infinity.
      [
        [good("n1"), { id: "far", vector: hashed("far").map((x, i) => (i === 5 ? -1e39 : x)) }],
        "records[1]: vector holds a value beyond a float32's range (±3.4e38)",
        "records[1].vector",
      ],
    ];
    for (const [records, message, param] of cases) {
      const res = await server.request("POST", "/v1/datastores/kb/records", { records });
      expect(res.status, message).toBe(400);
      expect(res.body.error.message).toBe(message);
      expect(res.body.error.param).toBe(param);
    }
    const ndjson = [good("n1"), good("n2"), good("n3")].map((r) => JSON.stringify(r)).join("\n") + "\n{not json\n";
    const res = await server.request("POST", "/v1/datastores/kb/records", ndjson, { "content-type": "application/x-ndjson" });
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({
      message: expect.stringMatching(/^records\[3\]: line is not valid JSON/),
      code: "invalid_record",
    });
    // A bad record in the third streamed part: the two parts already staged are discarded too.
    const lines = Array.from({ length: 2500 }, (_, i) => JSON.stringify(good(`s${i}`)));
    lines.push(JSON.stringify({ id: "wrong", text: "x", vector: [1, 2] }));
    const late = await server.request("POST", "/v1/datastores/kb/records", lines.join("\n"), { "content-type": "application/x-ndjson" });
    expect(late.status).toBe(400);
    expect(late.body.error.message).toBe("records[2500]: vector has 2 dimensions; the store's vectors have 384");
    expect((await server.request("GET", "/v1/datastores/kb/records/s0")).status).toBe(404);
    expect((await server.request("POST", "/v1/datastores/kb/records", '{"records": [')).status).toBe(400);
    expect((await server.request("POST", "/v1/datastores/kb/records", { items: [] })).body.error.param).toBe("records");
    expect(await count("kb")).toBe(before);
    expect((await server.request("GET", "/v1/datastores/kb/records/n1")).status).toBe(404);
  });

  it("streams a large NDJSON upsert and a JSON upsert split into small chunks", async () => {
    await server.request("POST", "/v1/datastores", { name: "bulk" });
    const n = 20_000;
    async function* ndjson() {
      for (let i = 0; i < n; i += 1000) {
        let s = "";
        for (let j = i; j < i + 1000; j++)
          s += JSON.stringify({ id: `b${j}`, text: `bulk record number ${j}`, metadata: { j }, vector: [1, j % 10, 0.5] }) + "\n";
        yield new TextEncoder().encode(s);
      }
    }
    const res = await fetch(`${server.url}/v1/datastores/bulk/records`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/x-ndjson" },
      body: ndjson() as unknown as BodyInit, // undici streams an async iterable body
      duplex: "half",
    } as RequestInit);
    expect(res.status).toBe(200);
    expect(((await res.json()) as any).data.upserted).toBe(n);
    expect(await count("bulk")).toBe(n);

    // A JSON body cut every 7 bytes: records, strings with escapes and brackets cross the cuts.
    const records = Array.from({ length: 300 }, (_, i) => ({
      id: `j${i}`,
      text: `quote " and ] bracket } ${i}`,
      metadata: { nested: { list: [i, "]"] } },
      vector: [0, 1, i],
    }));
    /** postCut posts a body to the bulk store's records in pieces of 7 bytes. */
    const postCut = (body: string, contentType: string) => {
      const bytes = new TextEncoder().encode(body);
      async function* cut() {
        for (let i = 0; i < bytes.length; i += 7) yield bytes.slice(i, i + 7);
      }
      return fetch(`${server.url}/v1/datastores/bulk/records`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": contentType },
        body: cut() as unknown as BodyInit, // undici streams an async iterable body
        duplex: "half",
      } as RequestInit);
    };
    const json = await postCut(JSON.stringify({ note: "x", records, after: [1, { a: 2 }] }), "application/json");
    expect(json.status).toBe(200);
    expect(((await json.json()) as any).data.upserted).toBe(300);
    const got = await server.request("GET", "/v1/datastores/bulk/records/j299");
    expect(got.body.data).toMatchObject({ text: records[299].text, metadata: records[299].metadata });
    expect(await count("bulk")).toBe(n + 300);

    // NDJSON cut every 7 bytes: characters of two, three and four bytes, numbers and lines cross the
    // cuts; CRLF endings, blank lines and a last line without its newline. Every other line is long
    // enough (300 bytes) for its vector to be read from its bytes (datastore/record-json.ts).
    const lines = Array.from({ length: 50 }, (_, i) =>
      JSON.stringify({ id: `u${i}`, text: `é ☃ 𝄞 ${i}${i % 2 ? " and more".repeat(40) : ""}`, metadata: { i }, vector: [0.1, -2.5e-3, i] }),
    );
    const nd = await postCut(`\r\n${lines.join("\r\n\n")}`, "application/x-ndjson");
    expect(nd.status).toBe(200);
    expect(((await nd.json()) as any).data.upserted).toBe(50);
    const last = await server.request("GET", "/v1/datastores/bulk/records/u49");
    expect(last.body.data).toEqual({
      id: "u49",
      text: `é ☃ 𝄞 49${" and more".repeat(40)}`,
      metadata: { i: 49 },
      vector: [Math.fround(0.1), Math.fround(-2.5e-3), 49],
    });
  });

  it("takes records as NDJSON bytes over RPC, streamed and unary, after the message's records", async () => {
    await server.request("POST", "/v1/datastores", { name: "lines" });
    const client = createClient(
      DatastoreService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true }),
    );
    const headers = { authorization: `Bearer ${server.apiKey}` };
    const line = (id: string, extra: Record<string, unknown> = {}) =>
      JSON.stringify({ id, text: `line ${id}`, vector: hashed(id), ...extra });
    // The lines in two pieces, cut in the middle of a line (the pieces are joined in order).
    const bytes = (...lines: string[]) => {
      const all = new TextEncoder().encode(lines.join("\n"));
      const cut = Math.floor(all.length / 2);
      return [all.subarray(0, cut), all.subarray(cut)];
    };
    async function* parts() {
      yield {
        store: "lines",
        records: [{ id: "m0", text: "a message's record", vector: hashed("m0") }],
        ndjson: bytes(line("n0"), "", line("n1")),
      };
      // A record without a vector is embedded, in a streamed part too.
      yield { ndjson: bytes(line("n2", { metadata: { k: "v" } }), JSON.stringify({ id: "n2b", text: "embed me too" })) };
    }
    const streamed = await client.upsertRecordsStream(parts(), { headers });
    expect(streamed).toMatchObject({ upserted: 5, embedded: 1 });
    const unary = await client.upsertRecords(
      {
        store: "lines",
        records: [{ id: "m1", vector: hashed("m1") }],
        ndjson: bytes(line("n3"), JSON.stringify({ id: "n4", text: "embed me" })),
      },
      { headers },
    );
    expect(unary).toMatchObject({ upserted: 3, embedded: 1 });
    const got = await client.getRecords({ store: "lines", ids: ["m0", "n1", "n2", "n2b", "n4"] }, { headers });
    expect(got.records.map((r) => r.id)).toEqual(["m0", "n1", "n2", "n2b", "n4"]);
    expect(got.records[2].metadata).toEqual({ k: "v" });
    expect(got.records[3].vector).toHaveLength(384);
    expect(got.records[3].vector.some((x) => x !== 0)).toBe(true);
    expect(got.records[4].vector).toHaveLength(384);
    expect(await count("lines")).toBe(8);

    // An error names the record by its place in the request: the message's records first, then the lines.
    const refused = async (run: () => Promise<unknown>) => {
      const e = await run().then(
        () => undefined,
        (err) => ConnectError.from(err),
      );
      expect(e, "refused").toBeDefined();
      return { code: e!.code, message: e!.rawMessage, param: e!.metadata.get("shaker-param") };
    };
    expect(
      await refused(() =>
        client.upsertRecords(
          { store: "lines", records: [{ id: "m2", vector: hashed("m2") }], ndjson: bytes(line("n5"), "{oops") },
          { headers },
        ),
      ),
    ).toMatchObject({
      code: Code.InvalidArgument,
      message: expect.stringMatching(/^records\[2\]: line is not valid JSON/),
      param: "records[2]",
    });
    async function* late() {
      yield { store: "lines", ndjson: bytes(...Array.from({ length: 1500 }, (_, i) => line(`late${i}`))) };
      yield { ndjson: bytes(line("short", { vector: [1, 2] })) };
    }
    expect(await refused(() => client.upsertRecordsStream(late(), { headers }))).toMatchObject({
      code: Code.InvalidArgument,
      message: "records[1500]: vector has 2 dimensions; the store's vectors have 384",
      param: "records[1500].vector",
    });
    // All or nothing: neither request wrote anything.
    expect(await count("lines")).toBe(8);
    expect((await client.getRecords({ store: "lines", ids: ["m2", "late0"] }, { headers })).records).toEqual([]);
  });

  it("embeds records without vectors and text queries through the ModelProxy", async () => {
    await server.request("POST", "/v1/datastores", { name: "auto" });
    const up = await server.request("POST", "/v1/datastores/auto/records", { records: corpus });
    expect(up.status).toBe(200);
    expect(up.body.data.embedded).toBe(corpus.length);
    const res = await search("auto", { mode: "vector", query: "espresso coffee grind", limit: 3 });
    expect(ids(res.body)[0]).toBe("coffee");
    const hybrid = await search("auto", { mode: "hybrid", query: "sourdough starter", limit: 3 });
    expect(ids(hybrid.body)[0]).toBe("bread");
  });
});
