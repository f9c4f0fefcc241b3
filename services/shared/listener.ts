import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import http2, { type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import net from "node:net";

/** Handler serves one request, HTTP/1.1 or HTTP/2 alike. */
export type Handler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => void;

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

/** ListenOptions bound what a connection may cost before and between its requests. */
export interface ListenOptions {
  /**
   * headersTimeoutMs bounds the wait for a request's head: a new connection that has not sent its
   * first request's headers (HTTP/1.1) or the HTTP/2 preface and its first stream within this is
   * destroyed, and so is an HTTP/1.1 request whose headers take longer from its first byte.
   * Default 10,000; 0 turns it off.
   */
  headersTimeoutMs?: number;
  /**
   * idleTimeoutMs closes a connection with no request in flight: an HTTP/1.1 keep-alive connection
   * between requests, an HTTP/2 session with no open stream. A request in flight, however quiet (a
   * long run, an SSE stream, a gRPC server stream), is never cut. Default 65,000; 0 turns it off.
   */
  idleTimeoutMs?: number;
  /**
   * maxConnectionsPerAddress caps one client's open connections on TCP (an IPv6 client is its /64);
   * a connection over the cap is closed at once. Loopback counts too; a Unix socket has no cap.
   * Default 256; 0 turns the cap off.
   */
  maxConnectionsPerAddress?: number;
  /** maxConnections caps the listener's open connections in all; over it, new ones are closed at once. Default 0 (no cap). */
  maxConnections?: number;
}

/** listenDefaults are the limits a listener has unless its options say otherwise. */
export const listenDefaults: Required<ListenOptions> = {
  headersTimeoutMs: 10_000,
  idleTimeoutMs: 65_000,
  maxConnectionsPerAddress: 256,
  maxConnections: 0,
};

const h2Preface = Buffer.from("PRI * HTTP/2.0\r\n");

/**
 * closeIfBodyUnread makes an HTTP/1.1 response that starts before its request body was read to the
 * end say `Connection: close`. Such a request (refused early: too large, wrong type, bad record) is
 * abandoned and its socket destroyed, and a keep-alive client that reused the connection would see
 * its next request reset.
 */
function closeIfBodyUnread(req: http.IncomingMessage, res: http.ServerResponse): void {
  // A request without a body is not `complete` yet while its handler runs synchronously; it has
  // nothing left unread, and its connection may live on.
  const length = req.headers["content-length"];
  if (req.headers["transfer-encoding"] === undefined && (length === undefined || Number(length) === 0)) return;
  const writeHead = res.writeHead;
  res.writeHead = function (this: http.ServerResponse, ...args: unknown[]) {
    if (!req.complete && !this.headersSent) this.setHeader("connection", "close");
    return (writeHead as (...a: unknown[]) => http.ServerResponse).apply(this, args);
  } as typeof res.writeHead;
}

/**
 * listen serves `handler` on one port (or Unix socket) for HTTP/1.1 and cleartext HTTP/2 (h2c with
 * prior knowledge, as gRPC clients speak it). Each connection's first bytes decide: the HTTP/2
 * preface goes to the HTTP/2 server, anything else to the HTTP/1.1 server. `options` bound what a
 * connection may cost before and between requests (see ListenOptions).
 */
/** acceptBacklog is the accept queue's length asked of the kernel. */
const acceptBacklog = 4096;

export async function listen(handler: Handler, port: number, host: string, options?: ListenOptions): Promise<Listener>;
export async function listen(handler: Handler, target: ListenTarget, options?: ListenOptions): Promise<Listener>;
export async function listen(
  handler: Handler,
  portOrTarget: number | ListenTarget,
  hostOrOptions?: string | ListenOptions,
  maybeOptions?: ListenOptions,
): Promise<Listener> {
  const target: ListenTarget =
    typeof portOrTarget === "number" ? { port: portOrTarget, host: (hostOrOptions as string | undefined) ?? "127.0.0.1" } : portOrTarget;
  const limits = { ...listenDefaults, ...(typeof hostOrOptions === "object" ? hostOrOptions : maybeOptions) };
  const { headersTimeoutMs, idleTimeoutMs } = limits;
  const h1 = http.createServer(
    {
      keepAliveTimeout: idleTimeoutMs,
      headersTimeout: headersTimeoutMs,
      requestTimeout: 0,
      // How often Node looks for requests over headersTimeout; a tenth of it, within 50 ms to 1 s.
      connectionsCheckingInterval: headersTimeoutMs > 0 ? Math.min(1000, Math.max(50, Math.floor(headersTimeoutMs / 10))) : 1000,
    },
    (req, res) => {
      closeIfBodyUnread(req, res);
      handler(req, res);
    },
  );
  // Node enforces headersTimeout from a timer it starts on 'listening', and this server never
  // listens (sockets are handed to it with emit("connection")): start that timer here. Without it a
  // client that sends its headers a byte at a time holds the connection for ever.
  h1.emit("listening");
  const h2 = http2.createServer({}, handler);
  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    watchSession(session, headersTimeoutMs, idleTimeoutMs);
    session.once("close", () => sessions.delete(session));
  });
  const perAddress = new Map<string, number>();
  const server = net.createServer((socket) => {
    const client = addressKey(socket.remoteAddress);
    if (client !== undefined && limits.maxConnectionsPerAddress > 0) {
      const open = perAddress.get(client) ?? 0;
      if (open >= limits.maxConnectionsPerAddress) {
        socket.destroy();
        return;
      }
      perAddress.set(client, open + 1);
      socket.once("close", () => {
        const left = (perAddress.get(client) ?? 1) - 1;
        if (left > 0) perAddress.set(client, left);
        else perAddress.delete(client);
      });
    }
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.once("error", () => socket.destroy());
    // The first bytes must come in time; after the hand-over each protocol's own timers apply. A
    // loop busy past the deadline may hold this socket's bytes unread: they are read in this turn's
    // poll phase, which comes after the timers and before setImmediate's callbacks, so the socket
    // is judged then (a client that sent in time is not cut for the server's own lag).
    let handedOver = false;
    const firstBytes =
      headersTimeoutMs > 0
        ? setTimeout(
            () =>
              setImmediate(() => {
                if (!handedOver) socket.destroy();
              }),
            headersTimeoutMs,
          )
        : undefined;
    socket.once("close", () => clearTimeout(firstBytes));
    let seen = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      seen = Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, h2Preface.length);
      const isH2 = seen.subarray(0, n).equals(h2Preface.subarray(0, n));
      // Wait for more bytes only while the preface is still possible and not yet complete.
      if (isH2 && n < h2Preface.length) return;
      clearTimeout(firstBytes);
      handedOver = true;
      socket.removeListener("data", onData);
      socket.pause();
      socket.unshift(seen);
      (isH2 ? h2 : h1).emit("connection", socket);
      if (!isH2) socket.resume();
    };
    socket.on("data", onData);
  });
  if (limits.maxConnections > 0) server.maxConnections = limits.maxConnections;
  server.on("error", () => {});
  if ("path" in target) await removeStaleSocket(target.path);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const listening = () => {
      server.removeListener("error", reject);
      resolve();
    };
    // The accept queue holds a burst of connections the loop has not taken yet (Node's default, 511,
    // drops the SYNs of a burst beyond it: each such client waits a second or more to retry). The
    // kernel caps it at net.core.somaxconn.
    if ("path" in target) server.listen({ path: target.path, backlog: acceptBacklog }, listening);
    else server.listen({ port: target.port, host: target.host, backlog: acceptBacklog }, listening);
  });
  const close = async () => {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      // Closes idle keep-alive connections and stops the headers timer.
      h1.close();
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
 * watchSession closes an HTTP/2 session that has no stream open: within `firstMs` of its start (the
 * preface's rest and the first request's headers must come by then) and `idleMs` after its last
 * stream closed. A session with a stream open is never closed for quiet, however long the stream.
 */
function watchSession(session: http2.Http2Session, firstMs: number, idleMs: number): void {
  let open = 0;
  const expire = () => {
    if (session.closed || session.destroyed) return;
    // GOAWAY lets a client see it may reconnect; a session that does not end in a second is cut.
    session.close();
    setTimeout(() => session.destroy(), 1000).unref();
  };
  const arm = (ms: number) => (ms > 0 ? setTimeout(expire, ms) : undefined);
  let timer = arm(firstMs);
  session.on("stream", (stream: http2.ServerHttp2Stream) => {
    if (open++ === 0) clearTimeout(timer);
    stream.once("close", () => {
      if (--open === 0) timer = arm(idleMs);
    });
  });
  session.once("close", () => clearTimeout(timer));
}

/**
 * addressKey names the client a connection counts against: its IPv4 address (also when mapped into
 * IPv6), or the /64 prefix of an IPv6 address (one host's usual share, so it cannot dodge the cap
 * by cycling through its addresses). Undefined on a Unix socket.
 */
export function addressKey(address: string | undefined): string | undefined {
  if (!address) return undefined;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1];
  if (!address.includes(":")) return address;
  const bare = address.split("%")[0].toLowerCase();
  const [head, tail] = bare.includes("::") ? bare.split("::") : [bare, undefined];
  const headGroups = head ? head.split(":") : [];
  const tailGroups = tail ? tail.split(":") : [];
  const groups =
    tail === undefined
      ? headGroups
      : [...headGroups, ...Array(Math.max(0, 8 - headGroups.length - tailGroups.length)).fill("0"), ...tailGroups];
  const prefix = groups.slice(0, 4).map((g) => g.replace(/^0+/, "") || "0");
  return `${prefix.join(":")}::/64`;
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
