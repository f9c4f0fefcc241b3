// The unary fast path (services/shared/unary-fast-path.ts) on real ports, with the real clients:
// Connect-ES's Connect (binary and JSON, HTTP/1.1 and HTTP/2), gRPC and gRPC-Web transports, and
// grpc-js with proto-loader. Each call is checked to have been answered by the path that should
// answer it (the fast path, or Connect-ES's server behind it), with what a Connect server gives.
import http from "node:http";
import { gunzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, createClient, type HandlerContext } from "@connectrpc/connect";
import {
  compressionGzip,
  connectNodeAdapter,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DatastoreService, SearchRequestSchema } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { searchResponseEncoder } from "../services/datastore/search-encoding.js";
import { hideInternalErrors } from "../services/shared/errors.js";
import { grpcMessageEncoding } from "../services/shared/grpc-compat.js";
import { type Listener, listen } from "../services/shared/listener.js";
import { createUnaryFastPath } from "../services/shared/unary-fast-path.js";

const readMaxBytes = 64 * 1024;
// Every character a URI reserves, '%', non-ASCII and a newline: the message must reach every client as it is.
const awkward = "bad query: 100% ✓ (a/b?c=d&e+f) ünïcødé\nsecond line";

/** What the handler saw of its last call. */
const seen: { ctx?: HandlerContext; query?: string; aborted?: unknown; timeoutMs?: number } = {};
const counts = { fast: 0, connect: 0 };
/** How many answers the given binary encoder wrote. */
let encoded = 0;
let listener: Listener;

const routes = (router: ConnectRouter) =>
  router.service(DatastoreService, {
    async search(req, ctx) {
      seen.ctx = ctx;
      seen.query = req.query;
      seen.timeoutMs = ctx.timeoutMs();
      switch (req.query) {
        case "invalid":
          throw new ConnectError(awkward, Code.InvalidArgument, { "shaker-param": "query" });
        case "crash":
          throw new Error("secret database detail");
        case "wait":
          seen.aborted = undefined;
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
          seen.aborted = ctx.signal.reason;
          throw ConnectError.from(ctx.signal.reason);
        case "large":
          return { records: Array.from({ length: 200 }, (_, i) => ({ id: `r${i}`, text: "lorem ipsum ".repeat(10), score: i })) };
      }
      ctx.responseHeader.set("x-served", "search");
      ctx.responseTrailer.set("x-trailer", "done");
      return { records: [{ id: "r1", text: `${req.query} for ${ctx.requestHeader.get("authorization")}`, score: 1.5 }] };
    },
    async upsertRecordsStream(requests) {
      let n = 0;
      for await (const _ of requests) n++;
      return { upserted: n };
    },
  });

beforeAll(async () => {
  const connect = grpcMessageEncoding(connectNodeAdapter({ routes, readMaxBytes, interceptors: [hideInternalErrors] }));
  // Search's answers in binary are written by the Datastore's own encoder, as `shaker serve` has it.
  const encoder = {
    ...searchResponseEncoder,
    encode: (m: unknown) => {
      encoded++;
      return searchResponseEncoder.encode(m);
    },
  };
  const fast = createUnaryFastPath(routes, { readMaxBytes, encoders: [encoder] });
  listener = await listen(
    (req, res) => {
      if (fast(req as never, res as never)) counts.fast++;
      else {
        counts.connect++;
        connect(req as never, res as never);
      }
    },
    0,
    "127.0.0.1",
  );
});

afterAll(async () => {
  await listener?.close();
});

const headers = { authorization: "Bearer sk-test" };
const transports = () => ({
  "Connect binary, HTTP/1.1": createConnectTransport({ baseUrl: listener.url, httpVersion: "1.1", useBinaryFormat: true }),
  // connect-node's transport sends binary unless told otherwise
  "Connect JSON, HTTP/1.1": createConnectTransport({ baseUrl: listener.url, httpVersion: "1.1", useBinaryFormat: false }),
  "Connect binary, HTTP/2": createConnectTransport({ baseUrl: listener.url, httpVersion: "2", useBinaryFormat: true }),
  gRPC: createGrpcTransport({ baseUrl: listener.url }),
});

/** counted runs `call` and says which path answered it. */
async function counted<T>(call: () => Promise<T>): Promise<{ value?: T; error?: ConnectError; path: "fast" | "connect" }> {
  const before = { ...counts };
  let value: T | undefined;
  let error: ConnectError | undefined;
  try {
    value = await call();
  } catch (e) {
    error = ConnectError.from(e);
  }
  expect(counts.fast - before.fast + counts.connect - before.connect).toBe(1);
  return { value, error, path: counts.fast > before.fast ? "fast" : "connect" };
}

describe("unary fast path", () => {
  for (const name of ["Connect binary, HTTP/1.1", "Connect JSON, HTTP/1.1", "Connect binary, HTTP/2", "gRPC"] as const) {
    it(`answers ${name} calls with the handler's message, headers and trailers`, async () => {
      const client = createClient(DatastoreService, transports()[name]);
      let header: Headers | undefined;
      let trailer: Headers | undefined;
      const encodedBefore = encoded;
      const r = await counted(() =>
        client.search({ store: "s", query: "hello" }, { headers, onHeader: (h) => (header = h), onTrailer: (t) => (trailer = t) }),
      );
      expect(r.path).toBe("fast");
      expect(encoded - encodedBefore).toBe(name.includes("JSON") ? 0 : 1);
      expect(r.error).toBeUndefined();
      expect(r.value?.records[0]).toMatchObject({ id: "r1", text: "hello for Bearer sk-test", score: 1.5 });
      expect(header?.get("x-served")).toBe("search");
      expect(trailer?.get("x-trailer")).toBe("done");
      expect(seen.ctx?.protocolName).toBe(name === "gRPC" ? "grpc" : "connect");
      expect(seen.ctx?.requestHeader.get("authorization")).toBe("Bearer sk-test");
      expect(seen.timeoutMs).toBeUndefined();
    });

    it(`gives ${name} callers the handler's error, and an internal one without its cause`, async () => {
      const client = createClient(DatastoreService, transports()[name]);
      const invalid = await counted(() => client.search({ query: "invalid" }, { headers }));
      expect(invalid.path).toBe("fast");
      expect(invalid.error?.code).toBe(Code.InvalidArgument);
      expect(invalid.error?.rawMessage).toBe(awkward);
      expect(invalid.error?.metadata.get("shaker-param")).toBe("query");
      const crash = await counted(() => client.search({ query: "crash" }, { headers }));
      expect(crash.error?.code).toBe(Code.Internal);
      expect(crash.error?.rawMessage).toBe("internal error");
      expect(crash.error?.message).not.toContain("secret");
    });

    it(`aborts the handler's signal when a ${name} caller leaves, and at its deadline`, async () => {
      const client = createClient(DatastoreService, transports()[name]);
      const leaving = new AbortController();
      const call = counted(() => client.search({ query: "wait" }, { headers, signal: leaving.signal }));
      await expect.poll(() => seen.query === "wait" && seen.ctx).toBeTruthy();
      leaving.abort();
      expect((await call).path).toBe("fast");
      await expect.poll(() => seen.aborted).toBeInstanceOf(ConnectError);
      expect((seen.aborted as ConnectError).code).toBe(Code.Canceled);

      seen.aborted = undefined;
      const late = await counted(() => client.search({ query: "wait" }, { headers, timeoutMs: 150 }));
      expect(late.path).toBe("fast");
      expect(late.error?.code).toBe(Code.DeadlineExceeded);
      expect(seen.timeoutMs).toBeGreaterThan(0);
      // The handler's signal ends at the deadline, or when the client, which keeps the same deadline, leaves first.
      await expect.poll(() => seen.aborted).toBeInstanceOf(ConnectError);
      expect([Code.DeadlineExceeded, Code.Canceled]).toContain((seen.aborted as ConnectError).code);
    });

    it(`refuses a ${name} request over the size limit and compresses a large answer`, async () => {
      const client = createClient(DatastoreService, transports()[name]);
      const big = await counted(() => client.search({ query: "x".repeat(readMaxBytes + 10) }, { headers }));
      expect(big.path).toBe("fast");
      expect(big.error?.code).toBe(Code.ResourceExhausted);
      const large = await counted(() => client.search({ query: "large" }, { headers }));
      expect(large.value?.records).toHaveLength(200);
    });
  }

  it("reads a gzip-compressed request and sends a large answer gzip-compressed when the caller accepts it", async () => {
    for (const transport of [
      createConnectTransport({
        baseUrl: listener.url,
        httpVersion: "1.1",
        useBinaryFormat: true,
        sendCompression: compressionGzip,
        compressMinBytes: 1,
      }),
      createGrpcTransport({ baseUrl: listener.url, sendCompression: compressionGzip, compressMinBytes: 1 }),
    ]) {
      const r = await counted(() => createClient(DatastoreService, transport).search({ query: "hello".repeat(50) }, { headers }));
      expect(r.path).toBe("fast");
      expect(r.value?.records[0].text).toBe(`${"hello".repeat(50)} for Bearer sk-test`);
    }
    // On the wire: a plain HTTP/1.1 POST of the binary request, as curl sends it.
    const body = Buffer.from(toBinary(SearchRequestSchema, create(SearchRequestSchema, { query: "large" })));
    const u = new URL(listener.url);
    const answer = await new Promise<{ status: number; encoding?: string; type?: string; body: Buffer }>((resolve, reject) => {
      const req = http.request(
        {
          host: u.hostname,
          port: u.port,
          path: "/shaker.datastore.v1.DatastoreService/Search",
          method: "POST",
          headers: { "content-type": "application/proto", "accept-encoding": "gzip" },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () =>
            resolve({
              status: res.statusCode ?? 0,
              encoding: res.headers["content-encoding"],
              type: res.headers["content-type"],
              body: Buffer.concat(chunks),
            }),
          );
        },
      );
      req.on("error", reject);
      req.end(body);
    });
    expect(answer).toMatchObject({ status: 200, encoding: "gzip", type: "application/proto" });
    expect(gunzipSync(answer.body).byteLength).toBeGreaterThan(1024);
  });

  it("serves grpc-js with its messages and metadata exactly", async () => {
    const definition = protoLoader.loadSync(["shaker/datastore/v1/datastore.proto"], {
      includeDirs: ["proto"],
      keepCase: false,
      defaults: true,
    });
    const Datastore = (grpc.loadPackageDefinition(definition) as any).shaker.datastore.v1.DatastoreService as grpc.ServiceClientConstructor;
    const client = new Datastore(new URL(listener.url).host, grpc.credentials.createInsecure());
    const md = new grpc.Metadata();
    md.set("authorization", "Bearer sk-grpc-js");
    const call = (query: string) =>
      new Promise<{ error: grpc.ServiceError | null; value: any; trailer?: grpc.Metadata }>((resolve) => {
        let trailer: grpc.Metadata | undefined;
        const c = client.Search({ store: "s", query }, md, (error: grpc.ServiceError | null, value: unknown) =>
          resolve({ error, value, trailer }),
        );
        c.on("status", (s: grpc.StatusObject) => (trailer = s.metadata));
      });
    try {
      const before = counts.fast;
      const ok = await call("hello");
      expect(ok.error).toBeNull();
      expect(ok.value.records[0].text).toBe("hello for Bearer sk-grpc-js");
      const bad = await call("invalid");
      expect(bad.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(bad.error?.details).toBe(awkward);
      expect(bad.error?.metadata.get("shaker-param")).toEqual(["query"]);
      expect(counts.fast - before).toBe(2);
    } finally {
      client.close();
    }
  });

  it("leaves streaming methods, gRPC-Web and unknown paths to Connect-ES", async () => {
    const connect = createClient(DatastoreService, createConnectTransport({ baseUrl: listener.url, httpVersion: "2" }));
    async function* two() {
      yield { store: "s", records: [{ id: "a" }] };
      yield { store: "s", records: [{ id: "b" }] };
    }
    const stream = await counted(() => connect.upsertRecordsStream(two(), { headers }));
    expect(stream).toMatchObject({ path: "connect", value: { upserted: 2 } });
    const web = await counted(() =>
      createClient(DatastoreService, createGrpcWebTransport({ baseUrl: listener.url, httpVersion: "1.1" })).search(
        { query: "hello" },
        { headers },
      ),
    );
    expect(web.path).toBe("connect");
    expect(web.value?.records[0].text).toBe("hello for Bearer sk-test");
    const res = await fetch(`${listener.url}/shaker.datastore.v1.DatastoreService/Nope`, {
      method: "POST",
      headers: { "content-type": "application/proto" },
      body: new Uint8Array(),
    });
    expect(res.status).toBe(404);
  });

  it("refuses a malformed body with a Connect error, and a malformed deadline as Connect-ES does", async () => {
    const res = await fetch(`${listener.url}/shaker.datastore.v1.DatastoreService/Search`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"query": 12',
    });
    expect(res.status).toBe(400);
    expect((await res.json()).code).toBe("invalid_argument");
    const before = counts.connect;
    const timed = await fetch(`${listener.url}/shaker.datastore.v1.DatastoreService/Search`, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-timeout-ms": "soon" },
      body: "{}",
    });
    expect(timed.status).toBe(400);
    expect(counts.connect - before).toBe(1);
  });
});
