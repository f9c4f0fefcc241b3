// Attacks from outside without a key, at the sizes of the issue that found them, on a real Shaker
// with its default limits: slowloris sockets, an idle-connection flood from one address, large
// uploads with a made-up key. Timeouts here only detect hangs.
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listenDefaults } from "../../services/shared/listener.js";
import { socketClosed, startTestServer, type TestServer } from "../helpers.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function connect(port: number, localAddress: string): Promise<net.Socket | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1", localAddress });
    socket.once("connect", () => resolve(socket));
    socket.once("error", () => resolve(undefined));
  });
}

function healthz(port: number, localAddress: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ port, host: "127.0.0.1", localAddress, path: "/healthz", agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", () => resolve(0));
  });
}

describe("edge attacks without a key", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server.close());

  it("closes 1,000 slowloris sockets (silent, half a preface, headers a byte at a time) within the headers timeout", async () => {
    const port = server.shaker.port;
    const sockets: net.Socket[] = [];
    // Spread over four loopback addresses: the per-address cap is not what this tests.
    for (let i = 0; i < 1000; i++) {
      const socket = await connect(port, `127.0.0.${10 + (i % 4)}`);
      if (!socket) throw new Error(`connection ${i} failed`);
      socket.on("error", () => {});
      sockets.push(socket);
    }
    sockets.forEach((s, i) => {
      if (i % 3 === 1) s.write("PRI * HTTP/2");
      if (i % 3 === 2) {
        const text = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + "X-Slow: a\r\n".repeat(10_000);
        let at = 0;
        const timer = setInterval(() => (s.destroyed ? clearInterval(timer) : s.write(text[at++])), 500);
      }
    });
    // Meanwhile another client is served.
    expect(await healthz(port, "127.0.0.2")).toBe(200);
    const hang = listenDefaults.headersTimeoutMs * 3;
    const results = await Promise.all(sockets.map((s) => socketClosed(s, hang)));
    expect(results.filter((c) => !c).length).toBe(0);
  });

  it("refuses an idle flood from one address over the cap while other clients are served", async () => {
    const port = server.shaker.port;
    const flood: net.Socket[] = [];
    let refused = 0;
    for (let i = 0; i < 5000; i++) {
      const socket = await connect(port, "127.0.0.20");
      if (!socket) {
        refused++;
        continue;
      }
      socket.on("error", () => {});
      socket.once("close", () => refused++);
      flood.push(socket);
    }
    await sleep(500);
    // Every connection over the cap was closed by the server at once.
    expect(refused).toBeGreaterThanOrEqual(5000 - listenDefaults.maxConnectionsPerAddress);
    const statuses = await Promise.all(Array.from({ length: 100 }, (_, i) => healthz(port, `127.0.0.${30 + (i % 5)}`)));
    expect(statuses.every((s) => s === 200)).toBe(true);
    for (const s of flood) s.destroy();
  });

  it("answers 16 uploads of 120 MiB with a made-up key 401 without reading them, RSS flat", async () => {
    const port = server.shaker.port;
    const size = 120 * 1024 * 1024;
    const head = `POST /v1/workflows/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-made-up-key\r\nContent-Type: application/json\r\nContent-Length: ${size}\r\n\r\n`;

    // The key must be checked before the body is read: a server that reads first fails here,
    // before 16 x 120 MiB are sent to it.
    const probe = (await connect(port, "127.0.0.40"))!;
    probe.on("error", () => {});
    const early = await new Promise<boolean>((resolve) => {
      probe.once("data", () => resolve(true));
      setTimeout(() => resolve(false), 3000);
      probe.write(head);
    });
    probe.destroy();
    expect(early, "a made-up key's large upload is answered before its body is sent").toBe(true);

    const before = process.memoryUsage.rss();
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
    const chunk = Buffer.alloc(1024 * 1024, "a");
    const results = await Promise.all(
      Array.from({ length: 16 }, async (_, i) => {
        const socket = (await connect(port, `127.0.0.${50 + i}`))!;
        socket.on("error", () => {});
        let answer = "";
        let sent = 0;
        const answered = new Promise<void>((resolve) => {
          socket.on("data", (c) => {
            answer += c;
            resolve();
          });
          socket.on("close", () => resolve());
        });
        socket.write(head);
        while (sent < size && !answer && !socket.destroyed) {
          sent += chunk.length;
          if (!socket.write(chunk)) await Promise.race([new Promise((r) => socket.once("drain", r)), answered, sleep(5000)]);
        }
        await Promise.race([answered, sleep(30_000)]);
        socket.destroy();
        return { status: answer.slice(9, 12), sent };
      }),
    );
    clearInterval(sampler);
    expect(results.map((r) => r.status)).toEqual(Array(16).fill("401"));
    for (const r of results) expect(r.sent).toBeLessThan(size);
    // 16 bodies held would be 1.9 GB; the server takes in only what sits in socket buffers.
    expect(peak - before).toBeLessThan(256 * 1024 * 1024);
  });
});
