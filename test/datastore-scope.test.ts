import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { startTestServer, type TestServer } from "./helpers.js";

// Each workflow reports what its datastore calls did, catching the refusals.
const script = `
from shaker import DatastoreError

def execute(ctx):
    out = {}
    store = ctx.input["store"]
    try:
        out["get"] = ctx.datastore.get(store, "a")
        out["many"] = [r["id"] for r in ctx.datastore.get_many(store, ["b", "zz", "a"])]
        out["search"] = [h["id"] for h in ctx.datastore.search(store, "alpha", filter={"n": {"$lte": 1}})]
        out["vector"] = [h["id"] for h in ctx.datastore.search(store, vector=[0, 1], mode="vector", limit=1)]
    except DatastoreError as e:
        out["read_error"] = str(e)
    try:
        out["upserted"] = ctx.datastore.upsert(store, [{"id": "c", "text": "gamma written by a workflow", "vector": [1, 1]}])
    except DatastoreError as e:
        out["write_error"] = str(e)
    return out
`;

describe("datastore scope through real workflows", () => {
  let server: TestServer;
  const run = async (workflow: string, store: string) => {
    const res = await server.invoke({ model: `workflow:${workflow}`, messages: [], input: { store } });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body.output;
  };

  beforeAll(async () => {
    server = await startTestServer();
    for (const name of ["kb", "notes", "other"]) await server.request("POST", "/v1/datastores", { name });
    for (const name of ["kb", "notes", "other"]) {
      await server.request("POST", `/v1/datastores/${name}/records`, {
        records: [
          { id: "a", text: "alpha one", metadata: { n: 1 }, vector: [1, 0] },
          { id: "b", text: "beta alpha", metadata: { n: 2 }, vector: [0, 1] },
        ],
      });
    }
    await server.upload("reader", script, { datastores: [{ name: "kb" }] });
    await server.upload("writer", script, { datastores: [{ name: "notes", write: true }] });
  });
  afterAll(() => server.close());

  it("reads a bound store but may not write where the binding is read-only", async () => {
    const out = await run("reader", "kb");
    expect(out.get).toEqual({ id: "a", text: "alpha one", metadata: { n: 1 } });
    expect(out.many).toEqual(["b", "a"]);
    expect(out.search).toEqual(["a"]);
    expect(out.vector).toEqual(["b"]);
    expect(out.write_error).toContain("may only read datastore 'kb'");
    expect(out.upserted).toBeUndefined();
    expect((await server.request("GET", "/v1/datastores/kb/records/c")).status).toBe(404);
  });

  it("cannot read or write a store the workflow is not bound to", async () => {
    const out = await run("reader", "other");
    expect(out.read_error).toContain("not bound to datastore 'other'");
    expect(out.write_error).toContain("not bound to datastore 'other'");
    expect((await server.request("GET", "/v1/datastores/other/records/c")).status).toBe(404);
  });

  it("writes where the binding allows it", async () => {
    const out = await run("writer", "notes");
    expect(out.upserted).toBe(1);
    expect(out.write_error).toBeUndefined();
    const got = await server.request("GET", "/v1/datastores/notes/records/c");
    expect(got.body.data).toMatchObject({ id: "c", text: "gamma written by a workflow" });
  });

  it("keeps each account's stores apart", async () => {
    const registry = createClient(RegistryService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const { apiKey } = await registry.createApiKey({ accountName: "acme" }, { headers: { authorization: `Bearer ${server.apiKey}` } });
    const asAcme = { authorization: `Bearer ${apiKey}` };
    expect((await server.request("GET", "/v1/datastores", undefined, asAcme)).body.data).toEqual([]);
    expect((await server.request("GET", "/v1/datastores/kb/records/a", undefined, asAcme)).status).toBe(404);
    expect((await server.request("POST", "/v1/datastores/kb/search", { query: "alpha" }, asAcme)).status).toBe(404);
    expect((await server.request("POST", "/v1/datastores", { name: "kb" }, asAcme)).status).toBe(201);
    expect((await server.request("GET", "/v1/datastores/kb/records/a", undefined, asAcme)).status).toBe(404);
    expect((await server.request("GET", "/v1/datastores/kb/records/a")).status).toBe(200);
    expect((await server.request("GET", "/v1/datastores", undefined, { authorization: "Bearer sk-not-a-key" })).status).toBe(401);
  });
});
