import http, { type IncomingMessage, type ServerResponse } from "node:http";
import http2, { type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import net from "node:net";

/** Handler serves one request, HTTP/1.1 or HTTP/2 alike. */
export type Handler = (
  req: IncomingMessage | Http2ServerRequest,
  res: ServerResponse | Http2ServerResponse,
) => void;

/** Listener is one port (or Unix socket) that speaks HTTP/1.1 and cleartext HTTP/2. */
export interface Listener {
  /** port is the port actually bound (useful with port 0); 0 on a Unix socket. */
  port: number;
  /** url is http://host:port, or http+unix://<path, percent-encoded> on a Unix socket. */
  url: string;
  /** path is the Unix socket's path; undefined on TCP. */
  path?: string;
  close(): Promise<void>;
}

/** ListenTarget is where to listen: a TCP port and host, or a Unix domain socket path. */
export type ListenTarget = { port: number; host: string } | { path: string };

const h2Preface = Buffer.from("PRI * HTTP/2.0\r\n");

/**
 * closeIfBodyUnread makes an HTTP/1.1 response that starts before its request body was read to the
 * end say `Connection: close`. Such a request (refused early: too large, wrong type, bad record) is
 * abandoned and its socket destroyed, and a keep-alive client that reused the connection would see
 * its next request reset.
 */
function closeIfBodyUnread(req: http.IncomingMessage, res: http.ServerResponse): void {
  const writeHead = res.writeHead;
  res.writeHead = function (this: http.ServerResponse, ...args: unknown[]) {
    if (!req.complete && !this.headersSent) this.setHeader("connection", "close");
    return (writeHead as (...a: unknown[]) => http.ServerResponse).apply(this, args);
  } as typeof res.writeHead;
}

/**
 * listen serves `handler` on one port for HTTP/1.1 and cleartext HTTP/2 (h2c with prior knowledge,
 * as gRPC clients speak it). Each connection's first bytes decide: the HTTP/2 preface goes to the
 * HTTP/2 server, anything else to the HTTP/1.1 server.
 */
export async function listen(handler: Handler, port: number, host: string): Promise<Listener>;
export async function listen(handler: Handler, target: ListenTarget): Promise<Listener>;
export async function listen(handler: Handler, portOrTarget: number | ListenTarget, hostArg?: string): Promise<Listener> {
  const target: ListenTarget = typeof portOrTarget === "number" ? { port: portOrTarget, host: hostArg ?? "127.0.0.1" } : portOrTarget;
  const h1 = http.createServer({ keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
    closeIfBodyUnread(req, res);
    handler(req, res);
  });
  h1.headersTimeout = 60_000;
  const h2 = http2.createServer({}, handler);
  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.once("error", () => socket.destroy());
    let seen = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      seen = Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, h2Preface.length);
      const isH2 = seen.subarray(0, n).equals(h2Preface.subarray(0, n));
      // Wait for more bytes only while the preface is still possible and not yet complete.
      if (isH2 && n < h2Preface.length) return;
      socket.removeListener("data", onData);
      socket.pause();
      socket.unshift(seen);
      (isH2 ? h2 : h1).emit("connection", socket);
      if (!isH2) socket.resume();
    };
    socket.on("data", onData);
  });
  server.on("error", () => {});
  if ("path" in target) await removeStaleSocket(target.path);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const listening = () => {
      server.removeListener("error", reject);
      resolve();
    };
    if ("path" in target) server.listen(target.path, listening);
    else server.listen(target.port, target.host, listening);
  });
  const close = async () => {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      h1.closeIdleConnections();
      for (const s of sessions) s.close();
      // Give requests in flight a moment, then end whatever is left.
      setTimeout(() => {
        for (const s of sockets) s.destroy();
      }, 1000).unref();
    });
    if ("path" in target) unlinkQuietly(target.path);
  };
  if ("path" in target) {
    // Any local user may connect; the socket's directory is what restricts access, if anything.
    chmodSync(target.path, 0o666);
    return { port: 0, url: `http+unix://${encodeURIComponent(target.path)}`, path: target.path, close };
  }
  const address = server.address() as net.AddressInfo;
  const host = target.host;
  const shownHost = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host;
  return { port: address.port, url: `http://${shownHost.includes(":") ? `[${shownHost}]` : shownHost}:${address.port}`, close };
}

/**
 * removeStaleSocket deletes a socket file left at `path` by a server that is gone, so listening
 * there succeeds. A socket something still answers on is left alone (listening then fails with
 * EADDRINUSE), and so is any file that is not a socket.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return;
  }
  if (!isSocket) return;
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
  if (!live) unlinkQuietly(path);
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Already gone.
  }
}
