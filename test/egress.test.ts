import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { ExecutorService } from "../gen/shaker/executor/v1/executor_pb.js";
import { type EgressOptions, egressFetch, type Hop, internalReason, parseAllowList, type Resolver } from "../services/executor/egress.js";
import { startTestServer, type TestServer } from "./helpers.js";

/** A local HTTP server as the requests' target: it keeps what it was sent and answers by path. */
interface Target {
  server: Server;
  port: number;
  url: string;
  seen: { method: string; url: string; headers: IncomingMessage["headers"]; body: string }[];
}

async function startTarget(): Promise<Target> {
  const seen: Target["seen"] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      const url = new URL(req.url!, "http://target");
      if (url.pathname === "/redirect") {
        res.writeHead(Number(url.searchParams.get("status") ?? 302), { Location: url.searchParams.get("to")! });
        res.end();
        return;
      }
      const loop = /^\/loop\/(\d+)$/.exec(url.pathname);
      if (loop) {
        res.writeHead(302, { Location: `/loop/${Number(loop[1]) + 1}` });
        res.end();
        return;
      }
      if (url.pathname === "/hang") return; // never answers
      if (url.pathname === "/big") {
        res.writeHead(200, url.searchParams.has("chunked") ? {} : { "Content-Length": "5000" });
        res.end("x".repeat(5000));
        return;
      }
      const status = url.pathname.startsWith("/missing") ? 404 : 200;
      // Header names as written here reach the workflow as written (X-Test, not x-test).
      res.writeHead(status, { "Content-Type": "application/json", "X-Test": "yes" });
      res.end(
        JSON.stringify({
          path: req.url,
          method: req.method,
          body,
          authorization: req.headers.authorization ?? null,
          custom: req.headers["x-custom"] ?? null,
          contentType: req.headers["content-type"] ?? null,
        }),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return { server, port, url: `http://127.0.0.1:${port}`, seen };
}

const allowed = await startTarget();
const other = await startTarget();

describe("which addresses workflows may reach", () => {
  it("refuses loopback, link-local, private, CGNAT, this-network, unspecified, multicast and their IPv6 forms", () => {
    const internal = [
      "127.0.0.1",
      "127.255.255.254",
      "::1",
      "169.254.169.254",
      "169.254.0.1",
      "fe80::1",
      "febf::1",
      "10.0.0.1",
      "10.255.255.255",
      "172.16.0.1",
      "172.31.255.255",
      "192.168.1.1",
      "fc00::1",
      "fd12:3456::1",
      "100.64.0.1",
      "100.127.255.255",
      "0.0.0.0",
      "0.1.2.3",
      "::",
      "224.0.0.1",
      "239.255.255.250",
      "ff02::1",
      "255.255.255.255",
      "240.0.0.1",
      // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of internal IPv4 addresses.
      "::ffff:127.0.0.1",
      "::ffff:7f00:1",
      "::ffff:169.254.169.254",
      "::ffff:a00:1",
      "::127.0.0.1",
      "64:ff9b::a9fe:a9fe",
      "2002:7f00:1::1",
      "2002:a9fe:a9fe::",
    ];
    for (const address of internal) expect(internalReason(address), address).toBeDefined();
    const public_ = [
      "8.8.8.8",
      "1.1.1.1",
      "172.32.0.1",
      "172.15.255.255",
      "100.128.0.1",
      "100.63.255.255",
      "192.169.0.1",
      "2606:4700:4700::1111",
      "2001:db9::1",
      "::ffff:8.8.8.8",
      "64:ff9b::808:808",
      "2002:808:808::1",
    ];
    for (const address of public_) expect(internalReason(address), address).toBeUndefined();
    expect(internalReason("169.254.169.254")).toBe("link-local");
    expect(internalReason("::ffff:127.0.0.1")).toContain("IPv4-mapped 127.0.0.1, loopback");
    expect(internalReason("not an address")).toBeDefined();
  });

  it("reads the operator's allow-list: CIDR ranges, addresses with or without a port, host names", () => {
    const allow = parseAllowList([
      "10.0.0.0/8",
      " 192.168.1.5 ",
      "127.0.0.1:8080",
      "[::1]:9000",
      "fd00::/8",
      "localhost:3000",
      "*.internal",
      "Api.Corp",
      "",
    ]);
    expect(allow.entries).toHaveLength(8);
    expect(allow.allowsAddress("10.9.8.7", 1)).toBe(true);
    expect(allow.allowsAddress("::ffff:10.9.8.7", 1)).toBe(true);
    expect(allow.allowsAddress("11.0.0.1", 1)).toBe(false);
    expect(allow.allowsAddress("192.168.1.5", 443)).toBe(true);
    expect(allow.allowsAddress("192.168.1.6", 443)).toBe(false);
    expect(allow.allowsAddress("127.0.0.1", 8080)).toBe(true);
    expect(allow.allowsAddress("127.0.0.1", 8081)).toBe(false);
    expect(allow.allowsAddress("::1", 9000)).toBe(true);
    expect(allow.allowsAddress("::1", 9001)).toBe(false);
    expect(allow.allowsAddress("fd12::1", 1)).toBe(true);
    expect(allow.allowsName("localhost", 3000)).toBe(true);
    expect(allow.allowsName("localhost", 3001)).toBe(false);
    expect(allow.allowsName("db.internal", 5432)).toBe(true);
    expect(allow.allowsName("internal", 80)).toBe(false);
    expect(allow.allowsName("api.corp.", 443)).toBe(true);
    for (const bad of ["10.0.0.0/33", "10.0.0.0/8/1", "host:99999", "bad host", "http://x", "[::1]"]) {
      if (bad === "[::1]") {
        expect(parseAllowList([bad]).allowsAddress("::1", 1)).toBe(true);
        continue;
      }
      expect(() => parseAllowList([bad]), bad).toThrow(/SHAKER_HTTP_ALLOW/);
    }
  });
});

describe("egressFetch", () => {
  const none = parseAllowList([]);
  const local = parseAllowList(["127.0.0.1"]);
  async function fetchWith(url: string, options: EgressOptions, extra: Partial<Parameters<typeof egressFetch>[0]> = {}) {
    const hops: Hop[] = [];
    const result = await egressFetch(
      { method: "GET", url, headers: {}, body: new Uint8Array(0), timeoutMs: 5000, ...extra },
      options,
      (h) => hops.push(h),
    ).then(
      (out) => ({ out, err: undefined }),
      (e: unknown) => ({ out: undefined, err: ConnectError.from(e) }),
    );
    return { ...result, hops };
  }

  it("checks a name's addresses when the socket connects, and connects only to allowed ones", async () => {
    const resolver =
      (addresses: string[]): Resolver =>
      (_h, _o, cb) =>
        cb(
          null,
          addresses.map((address) => ({ address, family: address.includes(":") ? 6 : 4 })),
        );
    const refused = await fetchWith(`http://rebind.test:${allowed.port}/x`, { allow: none, resolve: resolver(["127.0.0.1"]) });
    expect(refused.err?.code).toBe(Code.PermissionDenied);
    expect(refused.err?.rawMessage).toContain(`rebind.test:${allowed.port}: it resolves to 127.0.0.1 (loopback address)`);
    expect(refused.err?.rawMessage).toContain("SHAKER_HTTP_ALLOW");
    expect(refused.hops).toMatchObject([{ host: `rebind.test:${allowed.port}`, status: 0, error: refused.err?.rawMessage }]);
    // An answer holding a forbidden address and an allowed one: only the allowed one is used.
    const mixed = await fetchWith(`http://rebind.test:${allowed.port}/mixed`, {
      allow: local,
      resolve: resolver(["10.0.0.1", "127.0.0.1"]),
    });
    expect(mixed.err).toBeUndefined();
    expect(mixed.out?.status).toBe(200);
    // A host name on the list may reach whatever it resolves to.
    const named = await fetchWith(`http://rebind.test:${allowed.port}/named`, {
      allow: parseAllowList([`rebind.test:${allowed.port}`]),
      resolve: resolver(["127.0.0.1"]),
    });
    expect(named.out?.status).toBe(200);
  });

  it("sends URL user-info as Basic authorization, records the host without it, and drops credentials on a redirect to another origin", async () => {
    const to = `${other.url}/landed`;
    const res = await fetchWith(
      `http://alice:pa%3Ass@127.0.0.1:${allowed.port}/redirect?to=${encodeURIComponent(to)}`,
      { allow: local },
      {
        headers: { Cookie: "c=1", "X-Custom": "kept" },
      },
    );
    expect(res.err).toBeUndefined();
    expect(res.out?.url).toBe(to);
    const first = allowed.seen.at(-1)!;
    expect(first.headers.authorization).toBe(`Basic ${Buffer.from("alice:pa:ss").toString("base64")}`);
    const landed = other.seen.at(-1)!;
    expect(landed.url).toBe("/landed");
    expect(landed.headers.authorization).toBeUndefined();
    expect(landed.headers.cookie).toBeUndefined();
    expect(landed.headers["x-custom"]).toBe("kept");
    expect(res.hops.map((h) => [h.host, h.status])).toEqual([
      [`127.0.0.1:${allowed.port}`, 302],
      [`127.0.0.1:${other.port}`, 200],
    ]);
  });

  it("turns a POST answered 303 into a GET without a body, and repeats it on 307", async () => {
    const body = new TextEncoder().encode("payload");
    const see = await fetchWith(
      `${allowed.url}/redirect?status=303&to=/after-303`,
      { allow: local },
      { method: "POST", body, headers: { "Content-Type": "text/plain" } },
    );
    expect(JSON.parse(Buffer.from(see.out!.body).toString())).toMatchObject({ method: "GET", body: "", contentType: null });
    const again = await fetchWith(`${allowed.url}/redirect?status=307&to=/after-307`, { allow: local }, { method: "POST", body });
    expect(JSON.parse(Buffer.from(again.out!.body).toString())).toMatchObject({ method: "POST", body: "payload" });
  });

  it("follows at most 5 redirects", async () => {
    const res = await fetchWith(`${allowed.url}/loop/0`, { allow: local });
    expect(res.err?.code).toBe(Code.FailedPrecondition);
    expect(res.err?.rawMessage).toContain("5 redirects");
    expect(res.hops).toHaveLength(6);
  });

  it("caps the response body, declared or not", async () => {
    for (const url of [`${allowed.url}/big`, `${allowed.url}/big?chunked`]) {
      const res = await fetchWith(url, { allow: local, maxResponseBytes: 1000 });
      expect(res.err?.code, url).toBe(Code.ResourceExhausted);
      expect(res.err?.rawMessage).toContain("larger than 1000 bytes");
    }
    const fits = await fetchWith(`${allowed.url}/big`, { allow: local, maxResponseBytes: 5000 });
    expect(fits.out?.body.length).toBe(5000);
  });

  it("caps the request body, and gives up at the timeout or when cancelled", async () => {
    const big = await fetchWith(`${allowed.url}/x`, { allow: local, maxRequestBytes: 10 }, { method: "POST", body: new Uint8Array(11) });
    expect(big.err?.code).toBe(Code.ResourceExhausted);
    const started = Date.now();
    const slow = await fetchWith(`${allowed.url}/hang`, { allow: local }, { timeoutMs: 300 });
    expect(slow.err?.code).toBe(Code.DeadlineExceeded);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(slow.hops[0].error).toContain("timed out");
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const cancelled = await fetchWith(`${allowed.url}/hang`, { allow: local }, { signal: controller.signal });
    expect(cancelled.err?.code).toBe(Code.Canceled);
  });

  it("refuses bad methods, schemes and header values", async () => {
    expect((await fetchWith("ftp://example.com/", { allow: none })).err?.code).toBe(Code.InvalidArgument);
    expect((await fetchWith(`${allowed.url}/`, { allow: local }, { method: "GE T" })).err?.code).toBe(Code.InvalidArgument);
    expect((await fetchWith(`${allowed.url}/`, { allow: local }, { headers: { "X-A": "a\r\nInjected: 1" } })).err?.code).toBe(
      Code.InvalidArgument,
    );
  });
});

// Two real servers: one allows the first local target (only its port), one allows nothing.
const servers: { allowing: TestServer; strict: TestServer } = Object.fromEntries(
  await Promise.all([
    startTestServer({ workers: 1, httpAllow: [`127.0.0.1:${allowed.port}`] }).then((s) => ["allowing", s] as const),
    startTestServer({ workers: 1 }).then((s) => ["strict", s] as const),
  ]),
) as never;

afterAll(async () => {
  // The /hang requests were given up on, not answered: their connections are closed here.
  for (const t of [allowed, other]) {
    t.server.closeAllConnections();
    t.server.close();
  }
  await Promise.all([servers.allowing.close(), servers.strict.close()]);
});

const tour = `
from shaker import HttpError

def execute(ctx):
    base = ctx.input["base"]
    got = ctx.http.get(base + "/items", params={"q": "a b"}, headers={"X-Custom": "c1"})
    posted = ctx.http.post(base + "/items", json={"name": "x"})
    raw = ctx.http.put(base + "/raw", data=b"\\x00\\x01bytes", headers={"content-type": "application/octet-stream"})
    form = ctx.http.post(base + "/form", data={"a": "1", "b": "two"})
    missing = ctx.http.get(base + "/missing")
    moved = ctx.http.get(base + "/redirect?to=/moved-here")
    return {"got": got.json(), "status": got.status, "ok": got.ok, "header": got.headers.get("X-Test"),
            "content_type": got.headers.get("Content-Type"), "url": got.url,
            "posted": posted.json(), "raw": raw.json(), "form": form.json(),
            "missing": [missing.status, missing.ok, missing.json()["path"]],
            "moved": [moved.status, moved.url, moved.json()["path"]]}
`;

const tryAll = `
from shaker import HttpError

def execute(ctx):
    out = {}
    for url in ctx.input["urls"]:
        try:
            out[url] = ctx.http.get(url, timeout=5).status
        except HttpError as e:
            out[url] = "HttpError: " + str(e)
    return out
`;

async function uploadBoth(ref: string, script: string) {
  await Promise.all([servers.allowing.upload(ref, script), servers.strict.upload(ref, script)]);
}

async function runRecord(server: TestServer, runId: string) {
  const res = await server.request("GET", `/v1/runs/${runId}`);
  expect(res.status).toBe(200);
  return res.body.data;
}

describe("ctx.http through the Executor, from real workflows", () => {
  it("makes GET, PUT and POST requests to an allowed local server and returns status, headers, body, JSON and non-2xx answers", async () => {
    await uploadBoth("http-tour", tour);
    const res = await servers.allowing.invoke({ model: "workflow:http-tour", input: { base: allowed.url } });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const out = res.body.output;
    expect(out.got).toMatchObject({ path: "/items?q=a+b", method: "GET", body: "", custom: "c1" });
    expect(out.status).toBe(200);
    expect(out.ok).toBe(true);
    expect(out.header).toBe("yes");
    expect(out.content_type).toBe("application/json");
    expect(out.url).toBe(`${allowed.url}/items?q=a+b`);
    expect(out.posted).toMatchObject({ method: "POST", contentType: "application/json" });
    expect(JSON.parse(out.posted.body)).toEqual({ name: "x" });
    expect(out.raw).toMatchObject({ method: "PUT", body: "\u0000\u0001bytes", contentType: "application/octet-stream" });
    expect(out.form).toMatchObject({ method: "POST", body: "a=1&b=two", contentType: "application/x-www-form-urlencoded" });
    expect(out.missing).toEqual([404, false, "/missing"]);
    expect(out.moved).toEqual([200, `${allowed.url}/moved-here`, "/moved-here"]);

    const run = await runRecord(servers.allowing, res.body.run_id);
    const host = `127.0.0.1:${allowed.port}`;
    expect(run.http_calls.map((h: any) => [h.method, h.host, h.status])).toEqual([
      ["GET", host, 200],
      ["POST", host, 200],
      ["PUT", host, 200],
      ["POST", host, 200],
      ["GET", host, 404],
      ["GET", host, 302],
      ["GET", host, 200],
    ]);
    expect(run.http_calls.every((h: any) => h.duration_ms > 0 && h.error === "")).toBe(true);
  });

  it("refuses the same URL on a server whose operator allowed nothing, and a name that resolves to loopback", async () => {
    await uploadBoth("http-try", tryAll);
    const before = allowed.seen.length;
    const direct = `${allowed.url}/items`;
    const named = `http://localhost:${allowed.port}/items`;
    const res = await servers.strict.invoke({ model: "workflow:http-try", input: { urls: [direct, named] } });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.output[direct]).toMatch(
      /^HttpError: GET http:\/\/127\.0\.0\.1:\d+ failed: refused to connect to 127\.0\.0\.1:\d+ \(loopback address\)/,
    );
    expect(res.body.output[direct]).toContain("SHAKER_HTTP_ALLOW");
    expect(res.body.output[named]).toContain(
      `refused to connect to localhost:${allowed.port}: it resolves to 127.0.0.1 (loopback address)`,
    );
    expect(allowed.seen.length).toBe(before);
    const run = await runRecord(servers.strict, res.body.run_id);
    expect(run.http_calls.map((h: any) => [h.host, h.status])).toEqual([
      [`127.0.0.1:${allowed.port}`, 0],
      [`localhost:${allowed.port}`, 0],
    ]);
    expect(run.http_calls[0].error).toContain("refused to connect");
  });

  it("refuses the metadata address, other ports and mapped forms, and redirects from an allowed host to forbidden ones", async () => {
    const urls = [
      "http://169.254.169.254/latest/meta-data/",
      `${other.url}/not-allowed-port`,
      `http://[::ffff:7f00:1]:${other.port}/mapped`,
      `${allowed.url}/redirect?to=${encodeURIComponent(`${other.url}/via-redirect`)}`,
      `${allowed.url}/redirect?to=${encodeURIComponent("http://169.254.169.254/latest/meta-data/")}`,
      `${allowed.url}/redirect?to=${encodeURIComponent(`http://localhost:${allowed.port}/named`)}`,
    ];
    const before = other.seen.length;
    const res = await servers.allowing.invoke({ model: "workflow:http-try", input: { urls } });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const out = res.body.output;
    expect(out[urls[0]]).toContain("refused to connect to 169.254.169.254:80 (link-local address)");
    expect(out[urls[1]]).toContain(`refused to connect to 127.0.0.1:${other.port} (loopback address)`);
    expect(out[urls[2]]).toContain("IPv4-mapped 127.0.0.1, loopback");
    expect(out[urls[3]]).toContain(`refused to connect to 127.0.0.1:${other.port}`);
    expect(out[urls[4]]).toContain("refused to connect to 169.254.169.254:80");
    // localhost is not 127.0.0.1 by name; its address and port are on the list, though, so it passes.
    expect(out[urls[5]]).toBe(200);
    expect(other.seen.length).toBe(before);
    const run = await runRecord(servers.allowing, res.body.run_id);
    const a = `127.0.0.1:${allowed.port}`;
    expect(run.http_calls.map((h: any) => [h.host, h.status])).toEqual([
      ["169.254.169.254", 0],
      [`127.0.0.1:${other.port}`, 0],
      [`[::ffff:7f00:1]:${other.port}`, 0],
      [a, 302],
      [`127.0.0.1:${other.port}`, 0],
      [a, 302],
      ["169.254.169.254", 0],
      [a, 302],
      [`localhost:${allowed.port}`, 200],
    ]);
  });

  it("records hosts without user-info, and sends user-info as Basic authorization", async () => {
    await servers.allowing.upload(
      "http-userinfo",
      `
def execute(ctx):
    r = ctx.http.get(ctx.input["base"].replace("http://", "http://bob:pw-in-url@") + "/who")
    return r.json()["authorization"]
`,
    );
    const res = await servers.allowing.invoke({ model: "workflow:http-userinfo", input: { base: allowed.url } });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.output).toBe(`Basic ${Buffer.from("bob:pw-in-url").toString("base64")}`);
    const run = await runRecord(servers.allowing, res.body.run_id);
    expect(run.http_calls.map((h: any) => h.host)).toEqual([`127.0.0.1:${allowed.port}`]);
    expect(JSON.stringify(run.http_calls)).not.toContain("pw-in-url");
    expect(JSON.stringify(run.http_calls)).not.toContain("bob");
  });

  it("takes Fetch only from a run's token", async () => {
    const executor = createClient(ExecutorService, createConnectTransport({ baseUrl: servers.allowing.url, httpVersion: "1.1" }));
    const err = await executor.fetch({ url: `${allowed.url}/x` }, { headers: { authorization: `Bearer ${servers.allowing.apiKey}` } }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.code).toBe(Code.PermissionDenied);
    const anonymous = await executor.fetch({ url: `${allowed.url}/x` }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(anonymous?.code).toBe(Code.Unauthenticated);
  });
});
