// The ModelProxy's own HTTP/1.1 client of upstreams (services/modelproxy/upstream.ts), against
// servers of this file that answer byte by byte where it matters: kept-alive connections reused,
// answers framed by Content-Length, chunks or the connection's end and split anywhere across
// packets, Server-Sent Events whose lines, CRLFs and UTF-8 characters are split, error answers and
// Retry-After, lost connections and cancels. The service's use of it is in modelproxy.test.ts.
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { type AddressInfo, createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { classify, loadProxyConfig, retryAfterMs } from "../services/modelproxy/providers.js";
import {
  type Cancellable,
  retryAfter,
  UpstreamClient,
  UpstreamConnectionError,
  UpstreamStatusError,
  UpstreamStreamError,
} from "../services/modelproxy/upstream.js";

const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

/** never is a bound that never cancels. */
const never: Cancellable = { onCancel() {} };

/** bound is a bound whose cancel the test calls. */
function bound(): Cancellable & { cancel(reason: Error): void } {
  let fn: ((e: Error) => void) | undefined;
  return {
    onCancel: (f) => {
      fn = f;
    },
    cancel: (e) => fn?.(e),
  };
}

/** httpServer starts a node:http server and counts the connections made to it. */
async function httpServer(handle: (req: IncomingMessage, body: string, res: ServerResponse) => void): Promise<{
  url: string;
  connections: () => number;
  requests: { headers: IncomingMessage["headers"]; url: string; body: string }[];
  server: Server;
}> {
  let connections = 0;
  const requests: { headers: IncomingMessage["headers"]; url: string; body: string }[] = [];
  const server = createHttpServer(async (req, res) => {
    let body = "";
    for await (const c of req) body += c;
    requests.push({ headers: req.headers, url: req.url ?? "", body });
    handle(req, body, res);
  });
  server.on("connection", () => connections++);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  closers.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`, connections: () => connections, requests, server };
}

/** rawServer starts a TCP server that answers each request (read up to its body) with `answer`. */
async function rawServer(answer: (socket: Socket, request: string) => void | Promise<void>): Promise<{ url: string; sockets: Socket[] }> {
  const sockets: Socket[] = [];
  const server: NetServer = createNetServer((socket) => {
    sockets.push(socket);
    socket.setNoDelay(true);
    let buf = "";
    socket.on("data", (c) => {
      buf += c.toString("latin1");
      const head = buf.indexOf("\r\n\r\n");
      if (head < 0) return;
      const length = Number(/content-length: (\d+)/i.exec(buf.slice(0, head))?.[1] ?? 0);
      if (buf.length < head + 4 + length) return;
      const request = buf.slice(0, head + 4 + length);
      buf = buf.slice(head + 4 + length);
      void answer(socket, request);
    });
    socket.on("error", () => {});
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  closers.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`, sockets };
}

const tick = () => new Promise((r) => setTimeout(r, 2));

/** dribble writes `bytes` in pieces of `size`, each its own packet. */
async function dribble(socket: Socket, bytes: Buffer, size: number): Promise<void> {
  for (let i = 0; i < bytes.length; i += size) {
    socket.write(bytes.subarray(i, i + size));
    await tick();
  }
}

async function collect(it: AsyncIterator<unknown>): Promise<unknown[]> {
  const out: unknown[] = [];
  for (let n = await it.next(); !n.done; n = await it.next()) out.push(n.value);
  return out;
}

describe("the upstream client", () => {
  it("sends one POST with the key, the JSON body, content-length and traceparent, to the base URL's path (query after it)", async () => {
    const s = await httpServer((_req, _body, res) => res.end('{"ok":true}'));
    const client = new UpstreamClient(`${s.url}?api-version=2024`, "sk-up");
    const trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    expect(await client.json("/chat/completions", { model: "m", messages: [] }, trace, never)).toEqual({ ok: true });
    const [r] = s.requests;
    expect(r.url).toBe("/v1/chat/completions?api-version=2024");
    expect(r.headers).toMatchObject({ authorization: "Bearer sk-up", "content-type": "application/json", traceparent: trace });
    expect(JSON.parse(r.body)).toEqual({ model: "m", messages: [] });
    expect(Number(r.headers["content-length"])).toBe(Buffer.byteLength(r.body));
    // No key: no authorization header; a traceparent that could end its line is left out.
    await new UpstreamClient(s.url, "").json("/x", { é: "ü" }, "00-a\r\nx-evil: 1", never);
    expect(s.requests[1].headers.authorization).toBeUndefined();
    expect(s.requests[1].headers.traceparent).toBeUndefined();
    expect(s.requests[1].headers["x-evil"]).toBeUndefined();
    expect(JSON.parse(s.requests[1].body)).toEqual({ é: "ü" });
    expect(() => new UpstreamClient(s.url, "sk\nx")).toThrow(/line breaks/);
  });

  it("reuses one kept-alive connection for calls in sequence, and opens more for calls at once", async () => {
    const s = await httpServer((_req, body, res) => {
      res.setHeader("content-type", "application/json");
      res.end(body);
    });
    const client = new UpstreamClient(s.url, "k");
    for (let i = 0; i < 5; i++) expect(await client.json("/echo", { i }, undefined, never)).toEqual({ i });
    expect(s.connections()).toBe(1);
    const all = await Promise.all([1, 2, 3].map((i) => client.json("/echo", { i }, undefined, never)));
    expect(all).toEqual([{ i: 1 }, { i: 2 }, { i: 3 }]);
    expect(s.connections()).toBe(3);
    for (let i = 0; i < 5; i++) await client.json("/echo", { i }, undefined, never);
    expect(s.connections()).toBe(3);
  });

  it("opens a new connection when the upstream closed an idle one, and lets idle ones go after the Keep-Alive timeout it names", async () => {
    const s = await httpServer((_req, _body, res) => res.end("{}"));
    const client = new UpstreamClient(s.url, "k");
    await client.json("/a", {}, undefined, never);
    s.server.closeIdleConnections();
    await new Promise((r) => setTimeout(r, 50));
    await client.json("/a", {}, undefined, never);
    expect(s.connections()).toBe(2);

    // Keep-Alive: timeout=1 → kept 0 s (a second less than named): not reused at all.
    const short = await rawServer((socket) => {
      socket.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=1\r\n\r\n{}");
    });
    const c2 = new UpstreamClient(short.url, "k");
    await c2.json("/a", {}, undefined, never);
    await c2.json("/a", {}, undefined, never);
    expect(short.sockets.length).toBe(2);
  });

  it("sends a request again, once, on a new connection when a kept-alive one is closed before any answer", async () => {
    const served = new Map<Socket, number>();
    const raw = await rawServer((socket, request) => {
      const n = (served.get(socket) ?? 0) + 1;
      served.set(socket, n);
      // Every connection answers its first request and drops the second unanswered, as an
      // upstream does that closes an idle connection just as a request is sent on it.
      if (n === 2 || request.includes("/never")) socket.destroy();
      else socket.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
    });
    const client = new UpstreamClient(raw.url, "k");
    expect(await client.json("/a", {}, undefined, never)).toEqual({});
    expect(await client.json("/a", {}, undefined, never)).toEqual({});
    expect(raw.sockets.length).toBe(2);
    // A new connection closed unanswered is a lost connection (the service's to retry), and so is a second stale one.
    const fresh = await new UpstreamClient(raw.url, "k").json("/never", {}, undefined, never).catch((e: Error) => e);
    expect(fresh).toBeInstanceOf(UpstreamConnectionError);
    expect((fresh as Error).message).toMatch(/^connection failed/);
  });

  it("reads an answer of many packets, by Content-Length and chunked, and one ended by the connection's close", async () => {
    const big = { text: "x€".repeat(300_000), list: Array.from({ length: 2000 }, (_, i) => i) };
    const json = Buffer.from(JSON.stringify(big));
    const s = await httpServer((req, _body, res) => {
      if (req.url?.endsWith("/chunked")) {
        res.writeHead(200, { "content-type": "application/json" });
        for (let i = 0; i < json.length; i += 7777) res.write(json.subarray(i, i + 7777));
        res.end();
      } else {
        res.writeHead(200, { "content-type": "application/json", "content-length": json.length });
        res.end(json);
      }
    });
    const client = new UpstreamClient(s.url, "k");
    expect(await client.json("/length", {}, undefined, never)).toEqual(big);
    expect(await client.json("/chunked", {}, undefined, never)).toEqual(big);
    expect(s.connections()).toBe(1);

    // Every byte its own packet: the head, the chunk sizes, their CRLFs and a trailer split anywhere.
    const raw = await rawServer(async (socket, request) => {
      const answer = request.includes("/close")
        ? "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + '{"by":"close"}'
        : 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\n{"a":\r\n5\r\n"€"\r\n1\r\n}\r\n0\r\nx-trailer: 1\r\n\r\n';
      await dribble(socket, Buffer.from(answer), 1);
      if (request.includes("/close")) socket.end();
    });
    const c2 = new UpstreamClient(raw.url, "k");
    expect(await c2.json("/split", {}, undefined, never)).toEqual({ a: "€" });
    expect(await c2.json("/split", {}, undefined, never)).toEqual({ a: "€" });
    expect(raw.sockets.length).toBe(1);
    expect(await c2.json("/close", {}, undefined, never)).toEqual({ by: "close" });
    expect(await c2.json("/split", {}, undefined, never)).toEqual({ a: "€" });
    expect(raw.sockets.length).toBe(2);
  });

  it("answers an error status with the upstream's message and Retry-After, and malformed JSON as a SyntaxError", async () => {
    const s = await httpServer((req, _body, res) => {
      if (req.url?.endsWith("/429")) {
        res.writeHead(429, { "retry-after": "2", "content-type": "application/json" });
        res.end(JSON.stringify({ error: { message: "slow down", type: "rate_limit" } }));
      } else if (req.url?.endsWith("/503")) {
        res.writeHead(503, { "retry-after-ms": "150" });
        res.end("upstream overloaded");
      } else if (req.url?.endsWith("/500")) {
        res.writeHead(500);
        res.end();
      } else {
        res.end('{"choices": [');
      }
    });
    const client = new UpstreamClient(s.url, "k");
    const e429 = await client.json("/429", {}, undefined, never).catch((e: Error) => e);
    expect(e429).toBeInstanceOf(UpstreamStatusError);
    expect(e429).toMatchObject({ status: 429, message: "slow down", retryAfterMs: 2000 });
    expect(classify(e429, false, 0)).toMatchObject({ status: 429, message: "HTTP 429: slow down", next: "retry" });
    expect(retryAfterMs(e429)).toBe(2000);
    const e503 = await client.json("/503", {}, undefined, never).catch((e: Error) => e);
    expect(e503).toMatchObject({ status: 503, message: "upstream overloaded", retryAfterMs: 150 });
    expect(((await client.json("/500", {}, undefined, never).catch((e: Error) => e)) as Error).message).toBe("status code (no body)");
    const bad = await client.json("/bad", {}, undefined, never).catch((e: Error) => e);
    expect(bad).toBeInstanceOf(SyntaxError);
    expect(classify(bad, false, 0).next).toBe("next");
    // The connection survived every one of those answers.
    expect(s.connections()).toBe(1);
  });

  it("reads Retry-After in seconds, milliseconds or as a date, capped at 5 s, and classifies statuses", () => {
    expect(retryAfter({ "retry-after": "1.5" })).toBe(1500);
    expect(retryAfter({ "retry-after-ms": "20", "retry-after": "3" })).toBe(20);
    expect(retryAfter({ "retry-after": "600" })).toBe(5000);
    const inTwo = retryAfter({ "retry-after": new Date(Date.now() + 2500).toUTCString() })!;
    expect(inTwo).toBeGreaterThan(1000);
    expect(inTwo).toBeLessThanOrEqual(2500);
    expect(retryAfter({ "retry-after": "0" })).toBeUndefined();
    expect(retryAfter({ "retry-after": "soon" })).toBeUndefined();
    expect(retryAfter({})).toBeUndefined();
    const next = (status: number) => classify(new UpstreamStatusError(status, "x", undefined), false, 0).next;
    expect([408, 409, 429, 500, 502, 503, 504].map(next)).toEqual(Array(7).fill("retry"));
    expect([401, 403, 404].map(next)).toEqual(["next", "next", "next"]);
    expect([400, 413, 422].map(next)).toEqual(["stop", "stop", "stop"]);
    expect(classify(new UpstreamConnectionError("connection failed: ECONNRESET"), false, 0)).toMatchObject({
      next: "retry",
      message: "connection failed: ECONNRESET",
    });
    expect(classify(new Error("whatever"), true, 250)).toMatchObject({ timeout: true, message: "no answer within 250 ms" });
  });

  it("fails with a connection error when nothing listens or the answer is cut short, and ends a request on cancel", async () => {
    const s = await httpServer(() => {});
    const port = Number(new URL(s.url).port);
    await new Promise<void>((r) => s.server.close(() => r()));
    const refused = await new UpstreamClient(`http://127.0.0.1:${port}/v1`, "k").json("/x", {}, undefined, never).catch((e: Error) => e);
    expect(refused).toBeInstanceOf(UpstreamConnectionError);
    expect((refused as Error).message).toMatch(/^connection failed: .*ECONNREFUSED/);

    const cut = await rawServer((socket) => {
      socket.end('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial":');
    });
    const e = await new UpstreamClient(cut.url, "k").json("/x", {}, undefined, never).catch((err: Error) => err);
    expect(e).toBeInstanceOf(UpstreamConnectionError);
    expect((e as Error).message).toContain("mid-answer");

    const hang = await rawServer(() => {});
    const b = bound();
    const pending = new UpstreamClient(hang.url, "k").json("/x", {}, undefined, b).catch((err: Error) => err);
    await new Promise((r) => setTimeout(r, 30));
    const reason = new Error("no answer within 30 ms");
    b.cancel(reason);
    expect(await pending).toBe(reason);
    await new Promise((r) => setTimeout(r, 30));
    expect(hang.sockets[0].destroyed || hang.sockets[0].readableEnded).toBe(true);
  });
});

describe("upstream URLs in the config", () => {
  it("refuses a base URL that is not http(s) at start, naming where it came from", () => {
    const dir = mkdtempSync(join(tmpdir(), "shaker-upstream-url-"));
    try {
      const file = join(dir, "models.json");
      writeFileSync(file, JSON.stringify({ providers: { p: { base_url: "ftp://models.example/v1" } } }));
      const base = { openaiApiKey: undefined, openaiBaseUrl: undefined, modelsConfigFile: file, defaultModel: undefined };
      expect(() => loadProxyConfig(base, {})).toThrow(/providers\.p\.base_url' is not an http\(s\) URL/);
      expect(() => loadProxyConfig({ ...base, modelsConfigFile: undefined, openaiBaseUrl: "localhost:11434/v1" }, {})).toThrow(
        /OPENAI_BASE_URL is not an http\(s\) URL/,
      );
      const ok = loadProxyConfig({ ...base, modelsConfigFile: undefined, openaiBaseUrl: "http://[::1]:11434/v1/" }, {});
      expect(ok.providers.get("openai")?.client).toBeInstanceOf(UpstreamClient);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the upstream client's streams", () => {
  const chunk = (n: number, content: string) =>
    JSON.stringify({ id: "c", object: "chat.completion.chunk", choices: [{ index: 0, delta: { content }, finish_reason: null }], n });

  it("parses data lines split across packets: CRLFs, a UTF-8 character, comments and multi-line data", async () => {
    const events =
      ": a comment\r\n\r\n" +
      `data: ${chunk(1, "héllo 🌍")}\r\n\r\n` +
      `event: message\ndata:${chunk(2, "no space after the colon")}\n\n` +
      'data: {"n": 3,\ndata:  "multi": "line"}\n\n' +
      "id: 7\nretry: 10\n\n" +
      "data: [DONE]\n\n";
    const raw = await rawServer(async (socket) => {
      const body = Buffer.from(events);
      socket.write(`HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n`);
      // Chunks of 3 bytes, each its own packet: lines, CRLFs and the 4-byte 🌍 all split.
      for (let i = 0; i < body.length; i += 3) {
        const piece = body.subarray(i, i + 3);
        socket.write(`${piece.length.toString(16)}\r\n`);
        socket.write(piece);
        socket.write("\r\n");
        await tick();
      }
      socket.write("0\r\n\r\n");
    });
    const client = new UpstreamClient(raw.url, "k");
    const got = (await collect(await client.stream("/chat/completions", { stream: true }, undefined, never))) as any[];
    expect(got.map((c) => c.n)).toEqual([1, 2, 3]);
    expect(got[0].choices[0].delta.content).toBe("héllo 🌍");
    expect(got[1].choices[0].delta.content).toBe("no space after the colon");
    expect(got[2]).toEqual({ n: 3, multi: "line" });
    // After [DONE] and the answer's end (its last chunk comes a packet later here), the connection is reused.
    await new Promise((r) => setTimeout(r, 30));
    await collect(await client.stream("/chat/completions", {}, undefined, never));
    expect(raw.sockets.length).toBe(1);
  });

  it("yields what came before a malformed line or an error event, then fails; a stream ended without [DONE] just ends", async () => {
    const s = await httpServer((req, _body, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(`data: ${chunk(1, "a")}\n\n`);
      if (req.url?.endsWith("/malformed")) res.end("data: {not json\n\n");
      else if (req.url?.endsWith("/error-field")) res.end(`data: ${JSON.stringify({ error: { message: "overloaded" } })}\n\n`);
      else if (req.url?.endsWith("/error-event")) res.end(`event: error\ndata: ${JSON.stringify({ message: "boom" })}\n\n`);
      else res.end(`data: ${chunk(2, "b")}\n\ndata: ${chunk(3, "unterminated")}`);
    });
    const client = new UpstreamClient(s.url, "k");
    const run = async (path: string) => {
      const it = await client.stream(path, {}, undefined, never);
      const out: unknown[] = [];
      try {
        for (let n = await it.next(); !n.done; n = await it.next()) out.push((n.value as { n: number }).n);
        return { out };
      } catch (e) {
        return { out, error: e as Error };
      }
    };
    const malformed = await run("/malformed");
    expect(malformed.out).toEqual([1]);
    expect(malformed.error).toBeInstanceOf(SyntaxError);
    const field = await run("/error-field");
    expect(field.out).toEqual([1]);
    expect(field.error).toBeInstanceOf(UpstreamStreamError);
    expect(field.error?.message).toContain("overloaded");
    const event = await run("/error-event");
    expect(event.error?.message).toContain("boom");
    // The last event has no blank line after it: dropped, as the SSE rules say.
    expect(await run("/plain")).toEqual({ out: [1, 2] });
  });

  it("answers an error status before the stream as a status error, and fails a stream whose connection is lost or cancelled", async () => {
    const raw = await rawServer(async (socket, request) => {
      if (request.includes("/busy")) {
        const body = '{"error":{"message":"rate limit"}}';
        socket.write(`HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
        return;
      }
      socket.write("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
      const line = `data: ${chunk(1, "a")}\n\n`;
      socket.write(`${Buffer.byteLength(line).toString(16)}\r\n${line}\r\n`);
      if (request.includes("/lost")) {
        await tick();
        socket.destroy();
      }
      // "/stall": nothing more.
    });
    const client = new UpstreamClient(raw.url, "k");
    const busy = await client.stream("/busy", {}, undefined, never).catch((e: Error) => e);
    expect(busy).toMatchObject({ status: 429, message: "rate limit", retryAfterMs: 1000 });

    const lost = await client.stream("/lost", {}, undefined, never);
    expect(((await lost.next()).value as { n: number }).n).toBe(1);
    const e = await lost.next().catch((err: Error) => err);
    expect(e).toBeInstanceOf(UpstreamConnectionError);

    const b = bound();
    const stall = await client.stream("/stall", {}, undefined, b);
    await stall.next();
    const waiting = stall.next().catch((err: Error) => err);
    const reason = new Error("stalled");
    b.cancel(reason);
    expect(await waiting).toBe(reason);
  });

  it("closes the connection when the caller stops early, so the upstream stops generating", async () => {
    let closed = false;
    const s = await httpServer((_req, _body, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.on("close", () => {
        closed = true;
      });
      let n = 0;
      const timer = setInterval(() => res.write(`data: ${chunk(++n, "x")}\n\n`), 5);
      res.on("close", () => clearInterval(timer));
    });
    const it = await new UpstreamClient(s.url, "k").stream("/chat/completions", {}, undefined, never);
    await it.next();
    await it.return?.();
    for (let i = 0; i < 50 && !closed; i++) await new Promise((r) => setTimeout(r, 10));
    expect(closed).toBe(true);
  });

  it("pauses the socket while 64 chunks wait for the caller, and loses none", async () => {
    const s = await httpServer((_req, _body, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      let all = "";
      for (let n = 1; n <= 1000; n++) all += `data: ${chunk(n, "x".repeat(100))}\n\n`;
      res.end(`${all}data: [DONE]\n\n`);
    });
    const it = await new UpstreamClient(s.url, "k").stream("/chat/completions", {}, undefined, never);
    await new Promise((r) => setTimeout(r, 50));
    const got = (await collect(it)) as { n: number }[];
    expect(got.map((c) => c.n)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
  });
});
