// Bad input at volume: at least 10,000 malformed requests across every REST route and every RPC.
// No 5xx but the documented ones, the server alive throughout, its memory bounded.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DatastoreService } from "../../gen/shaker/datastore/v1/datastore_pb.js";
import { ExecutorService } from "../../gen/shaker/executor/v1/executor_pb.js";
import { ModelProxyService } from "../../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { RegistryService } from "../../gen/shaker/registry/v1/registry_pb.js";
import { startTestServer, type TestServer } from "../helpers.js";

const TOTAL = Number(process.env.FUZZ_REQUESTS ?? 10_000);

/** mulberry32: a small seeded PRNG, so a failure can be replayed with the same FUZZ_SEED. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const restRoutes: [string, string][] = [
  ["POST", "/v1/chat/completions"],
  ["POST", "/v1/embeddings"],
  ["GET", "/v1/models"],
  ["POST", "/v1/workflows/upload"],
  ["POST", "/v1/workflows/validate"],
  ["GET", "/v1/workflows"],
  ["GET", "/v1/workflows/%s"],
  ["DELETE", "/v1/workflows/%s"],
  ["GET", "/v1/workflows/default-script"],
  ["POST", "/v1/datastores"],
  ["GET", "/v1/datastores"],
  ["DELETE", "/v1/datastores/%s"],
  ["POST", "/v1/datastores/%s/records"],
  ["GET", "/v1/datastores/%s/records/%s"],
  ["POST", "/v1/datastores/%s/search"],
  ["GET", "/v1/runs"],
  ["GET", "/v1/runs/%s"],
  ["POST", "/v1/runs/%s/cancel"],
  ["GET", "/v1/sessions/%s"],
];

const rpcPaths = [RegistryService, ExecutorService, ModelProxyService, DatastoreService].flatMap((s) =>
  s.methods.map((m) => `/${s.typeName}/${m.name}`),
);

function nested(depth: number, r: () => number): string {
  const open = r() < 0.5 ? "[" : '{"a":';
  const close = open === "[" ? "]" : "}";
  return open.repeat(depth) + "1" + close.repeat(depth);
}

function badBody(r: () => number): { body: Buffer | string | undefined; contentType: string } {
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)];
  const fields = [
    "model",
    "messages",
    "input",
    "stream",
    "secrets",
    "metadata",
    "session_id",
    "workflow_ref_name",
    "script",
    "code",
    "records",
    "query",
    "mode",
    "limit",
    "filter",
    "vector",
    "name",
    "workflowRefName",
    "invocation",
    "body",
    "apiKey",
    "ids",
    "store",
    "runId",
    "accessories",
    "datastores",
    "env",
    "timeout_seconds",
    "version_bump",
  ];
  const values: unknown[] = [
    null,
    true,
    0,
    -1,
    1e308,
    "x",
    "",
    [],
    {},
    [1, "a"],
    { x: { y: [] } },
    "workflow:",
    "workflow:../../etc",
    "\u0000",
    "x".repeat(100_000),
    2 ** 53,
    -0.5,
    "workflow:hello@1.0",
    [{ role: 5 }],
    { __proto__: { polluted: 1 } },
  ];
  const contentTypes = [
    "application/json",
    "application/json",
    "text/plain",
    "application/x-ndjson",
    "application/octet-stream",
    "application/connect+json",
    "application/grpc",
    "multipart/form-data; boundary=x",
    "",
  ];
  const contentType = pick(contentTypes);
  switch (Math.floor(r() * 8)) {
    case 0:
      return { body: pick(["{", "}", "nul", '{"a":}', "[1,2", '{"model": "workflow:x", }', "\ufeff{}", "{'a': 1}"]), contentType };
    case 1: {
      const o: Record<string, unknown> = {};
      for (let i = 0; i < 1 + r() * 5; i++) o[pick(fields)] = pick(values);
      return { body: JSON.stringify(o), contentType };
    }
    case 2:
      return { body: JSON.stringify({ [pick(fields)]: "y".repeat(Math.floor(r() * 2_000_000)) }), contentType };
    case 3:
      return { body: nested(Math.floor(1000 + r() * 100_000), r), contentType };
    case 4:
      return {
        body: Buffer.concat([Buffer.from('{"model":"'), Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1]), Buffer.from('"}')]),
        contentType,
      };
    case 5:
      return { body: JSON.stringify({ unknown_field: pick(values), another: { deep: pick(values) } }), contentType };
    case 6:
      return { body: JSON.stringify(pick(values)), contentType };
    default:
      return { body: undefined, contentType };
  }
}

/** Statuses a bad request may get: client errors, and the documented server ones. */
function acceptable(status: number): boolean {
  return (
    (status >= 400 && status < 500) ||
    status === 200 ||
    status === 201 ||
    status === 202 ||
    status === 204 ||
    status === 501 ||
    status === 502 ||
    status === 503
  );
}

describe("bad input at volume", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer({ maxBodyBytes: 1024 * 1024 });
    await server.upload("hello", "def execute(ctx):\n    return 'hi'\n");
    // Not among the names the fuzzer uses, so its DELETEs cannot remove it.
    await server.upload("survivor", "def execute(ctx):\n    return 'hi'\n");
  });
  afterAll(() => server.close());

  it(`answers ${TOTAL} malformed requests with documented statuses and stays up with bounded memory`, async () => {
    const seed = Number(process.env.FUZZ_SEED ?? 20261123);
    const r = prng(seed);
    const unexpected: string[] = [];
    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    let done = 0;
    let resets = 0;
    const started = Date.now();
    const auth = [`Bearer ${server.apiKey}`, `Bearer ${server.apiKey}`, "", "Bearer sk-wrong", "Basic abc", `Bearer ${"k".repeat(10_000)}`];
    async function one(i: number): Promise<void> {
      const useRpc = r() < 0.4;
      const [method, template] = useRpc
        ? ["POST", rpcPaths[Math.floor(r() * rpcPaths.length)]]
        : restRoutes[Math.floor(r() * restRoutes.length)];
      const ids = ["hello", "nope", "..%2F..", "%00", "a".repeat(300), "run_x", "%E0%A4%A"];
      const path = template.replace(/%s/g, () => ids[Math.floor(r() * ids.length)]);
      const { body, contentType } = method === "GET" || method === "DELETE" ? { body: undefined, contentType: "" } : badBody(r);
      const headers: Record<string, string> = {};
      const a = auth[Math.floor(r() * auth.length)];
      if (a) headers.authorization = a;
      if (contentType) headers["content-type"] = contentType;
      if (useRpc && r() < 0.3) headers["connect-protocol-version"] = "1";
      try {
        const t0 = Date.now();
        const res = await fetch(server.url + path, { method, headers, body: body as never });
        await res.arrayBuffer();
        if (process.env.FUZZ_DEBUG && Date.now() - t0 > 500)
          process.stdout.write(
            `slow ${Date.now() - t0}ms #${i} ${method} ${path.slice(0, 80)} ${contentType} ${typeof body === "string" ? body.slice(0, 30) : body?.length} -> ${res.status}\n`,
          );
        if (!acceptable(res.status)) unexpected.push(`#${i} ${method} ${path} ${contentType} -> ${res.status}`);
      } catch (e) {
        // A server may refuse a large body it will not read (wrong content type, over the limit) and
        // close the connection while the client is still sending: the client then sees a reset.
        const reset = /ECONNRESET|EPIPE|SocketError: other side closed/.test(String((e as { cause?: unknown }).cause));
        const size = typeof body === "string" ? Buffer.byteLength(body) : (body?.length ?? 0);
        if (reset && size > 64 * 1024) {
          resets++;
          done++;
          return;
        }
        unexpected.push(
          `#${i} ${method} ${path} ${contentType} ${typeof body === "string" ? body.slice(0, 40) : body?.length} -> network error ${(e as Error).message} ${String((e as { cause?: unknown }).cause)}`,
        );
      }
      done++;
      if (done % 500 === 0) rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    }
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < TOTAL) await one(next++);
      }),
    );
    process.stdout.write(
      `fuzz: ${done} requests in ${((Date.now() - started) / 1000).toFixed(1)} s, ${resets} large bodies refused by reset\n`,
    );
    expect(unexpected.slice(0, 20)).toEqual([]);
    // Alive and still correct after all of it.
    const ok = await server.invoke({ model: "workflow:survivor", input: {} });
    expect(ok.status).toBe(200);
    expect(ok.body.output).toBe("hi");
    // Memory: the server (in this process) must not have grown without bound; 2 MB bodies are parsed
    // and dropped, so a few hundred MB of headroom over the start is generous but finite.
    expect(rssPeak - rssBefore).toBeLessThan(768 * 1024 * 1024);
  });
});
