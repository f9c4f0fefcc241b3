// The ModelProxy's client of OpenAI-compatible upstreams: one HTTP/1.1 POST on a kept-alive
// connection of its own pool, the JSON body out and one JSON.parse of the answer in; for streams,
// the SSE `data:` lines parsed straight off the socket. Retries, timeouts and fallbacks are the
// service's (each attempt is recorded), so this client makes exactly one request per call and
// never retries on its own.
//
// It replaces the `openai` npm client over a fetch() shim on node:http. Profiled on the proxied
// path, the SDK and the web streams, Response, Headers and AbortSignal objects it needs were about
// a third of the proxy's added CPU per call, and node:http's ClientRequest, Agent and
// IncomingMessage cost about twice the CPU per request of writing the request and reading the
// answer on the socket here (0.27 against 0.15 ms, measured with the fake upstream of the tests).
//
// What it speaks: HTTP/1.1 (or 1.0) answers framed by Content-Length, chunked Transfer-Encoding or
// the connection's end; 1xx interim answers skipped; no compression asked for, no redirects
// followed, no proxy. TLS for https base URLs (SNI, ALPN http/1.1).
import { isIP, connect as netConnect, type Socket } from "node:net";
import { StringDecoder } from "node:string_decoder";
import { connect as tlsConnect } from "node:tls";

/** At most this much of an error answer's body is read (its message is all that is kept). */
const maxErrorBody = 64 * 1024;
/** An answer's head (status line and headers), or a chunk-size or trailer line, longer than this is refused. */
const maxHeadBytes = 64 * 1024;
/** A stream's parsed chunks beyond this many waiting for the caller pause the socket. */
const maxQueued = 64;
/** Idle connections kept per upstream; more are closed. */
const maxIdle = 256;
/** How long an idle connection is kept when the upstream does not say (Keep-Alive: timeout=N): 4 s, below the 5 s of Node's and uvicorn's servers. */
const defaultIdleMs = 4000;

/** UpstreamStatusError is an upstream's answer with an HTTP status other than 2xx. */
export class UpstreamStatusError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** retryAfterMs is the wait the upstream asked for (Retry-After / retry-after-ms), capped at 5 s. */
    readonly retryAfterMs: number | undefined,
  ) {
    super(message);
    this.name = "UpstreamStatusError";
  }
}

/** UpstreamConnectionError is a connection that could not be made or was lost before the answer ended. */
export class UpstreamConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UpstreamConnectionError";
  }
}

/** UpstreamStreamError is an error event the upstream sent inside a stream. */
export class UpstreamStreamError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UpstreamStreamError";
  }
}

/**
 * Cancellable is what bounds one request: the client hands it the function that ends the request
 * in flight, and the holder calls it when the attempt times out or the caller goes away. (One
 * timer and no AbortController per attempt: see Watch in service.ts.)
 */
export interface Cancellable {
  onCancel(cancel: (reason: Error) => void): void;
}

/** Headers of an answer: lower-case names, repeated ones joined by ", ". */
export type AnswerHeaders = Record<string, string | undefined>;

/** retryAfter reads Retry-After (seconds or an HTTP date) and retry-after-ms, capped at 5 s. */
export function retryAfter(headers: AnswerHeaders): number | undefined {
  const ms = Number(headers["retry-after-ms"]);
  if (Number.isFinite(ms) && ms > 0) return Math.min(ms, 5000);
  const raw = headers["retry-after"];
  if (raw === undefined || raw === "") return undefined;
  let s = Number(raw);
  if (Number.isNaN(s)) s = (Date.parse(raw) - Date.now()) / 1000;
  if (Number.isFinite(s) && s > 0) return Math.min(s * 1000, 5000);
  return undefined;
}

/** errorMessage is the message of an error answer: the OpenAI `error.message` when there is one, else the body's text. */
function errorMessage(text: string): string {
  try {
    const body = JSON.parse(text) as { error?: unknown; message?: unknown };
    const e = body?.error;
    if (e && typeof e === "object") {
      const m = (e as { message?: unknown }).message;
      if (typeof m === "string" && m) return m;
      return JSON.stringify(e);
    }
    if (typeof e === "string" && e) return e;
    if (typeof body?.message === "string" && body.message) return body.message;
  } catch {
    // not JSON: the text itself
  }
  const t = text.trim();
  if (!t) return "status code (no body)";
  return t.length > 500 ? `${t.slice(0, 500)}…` : t;
}

/** Exchange receives one answer off a connection. */
interface Exchange {
  /** head is the final (non-1xx) status and headers. */
  head(status: number, headers: AnswerHeaders): void;
  body(chunk: Buffer): void;
  end(): void;
  fail(e: Error): void;
  /** conn is the connection the request went on; replaced when a stale one is retried. */
  conn: Conn;
  /** retried says the request was already sent again on a new connection. */
  retried?: boolean;
}

const CRLF = Buffer.from("\r\n");
const CRLFCRLF = Buffer.from("\r\n\r\n");

enum State {
  Idle,
  Head,
  Length,
  ChunkSize,
  ChunkData,
  ChunkEnd,
  Trailers,
  UntilClose,
}

/** Conn is one connection to an upstream and the parser of the answers that come on it, one at a time. */
class Conn {
  private exchange: Exchange | undefined;
  private request = "";
  private state = State.Idle;
  private pending: Buffer | undefined;
  private remaining = 0;
  private keepAlive = true;
  private idleMs = defaultIdleMs;
  /** got says a byte of the current answer arrived (a kept-alive connection closed before any did was stale). */
  private got = false;
  reused = false;
  dead = false;

  constructor(
    private readonly pool: Pool,
    readonly socket: Socket,
  ) {
    socket.setNoDelay(true);
    socket.on("data", (b: Buffer) => this.onData(b));
    socket.on("error", (e) => this.lost(e));
    socket.on("close", () => this.lost(undefined));
    socket.on("timeout", () => socket.destroy()); // only armed while idle
  }

  /** send writes a request; its answer goes to `exchange`. */
  send(request: string, exchange: Exchange): void {
    this.exchange = exchange;
    exchange.conn = this;
    this.request = request;
    this.state = State.Head;
    this.keepAlive = true;
    this.got = false;
    this.socket.write(request);
  }

  /** kill ends the exchange in flight without a word to it, and the connection. */
  kill(): void {
    this.exchange = undefined;
    this.dead = true;
    this.socket.destroy();
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /** idle parks the connection in the pool: unreferenced (it holds no process open) and closed after idleMs. */
  idle(): void {
    this.state = State.Idle;
    this.socket.setTimeout(this.idleMs);
    this.socket.unref();
  }

  /** wake takes the connection out of the pool. */
  wake(): void {
    this.reused = true;
    this.socket.setTimeout(0);
    this.socket.ref();
  }

  private fail(e: Error): void {
    const ex = this.exchange;
    this.kill();
    ex?.fail(e);
  }

  private lost(err: Error | undefined): void {
    const wasDead = this.dead;
    const state = this.state;
    this.dead = true;
    this.state = State.Idle;
    const ex = this.exchange;
    this.exchange = undefined;
    if (state === State.Idle || wasDead || !ex) {
      this.pool.forget(this);
      return;
    }
    // An answer framed by the connection's end ends with it.
    if (state === State.UntilClose && !err) {
      ex.end();
      return;
    }
    if (!this.got && this.reused && !ex.retried) {
      // A kept-alive connection the upstream closed while it sat idle (the close and the request
      // crossed): nothing was answered, so the request goes again, once, on a new connection.
      ex.retried = true;
      this.pool.acquire(true).send(this.request, ex);
      return;
    }
    const what = !this.got
      ? this.reused
        ? "the upstream closed a kept-alive connection before answering"
        : "connection failed"
      : "the upstream closed the connection mid-answer";
    ex.fail(new UpstreamConnectionError(err ? `${what}: ${err.message}` : what));
  }

  private onData(buf: Buffer): void {
    const ex = this.exchange;
    if (!ex || this.state === State.Idle) {
      // Nothing was asked: an upstream that talks out of turn is not reused.
      this.kill();
      return;
    }
    this.got = true;
    let b = buf;
    if (this.pending) {
      b = Buffer.concat([this.pending, buf]);
      this.pending = undefined;
    }
    let i = 0;
    while (i < b.length && this.exchange === ex) {
      switch (this.state) {
        case State.Head: {
          const e = b.indexOf(CRLFCRLF, i);
          if (e < 0) {
            this.keep(b, i, "the upstream's answer head is too long");
            return;
          }
          const ok = this.head(ex, b.toString("latin1", i, e));
          i = e + 4;
          if (!ok) return;
          if ((this.state as State) === State.Idle) this.complete(ex, i === b.length);
          break;
        }
        case State.Length:
        case State.ChunkData: {
          const n = Math.min(this.remaining, b.length - i);
          ex.body(n === b.length ? b : b.subarray(i, i + n));
          this.remaining -= n;
          i += n;
          if (this.remaining === 0) {
            if (this.state === State.Length) this.complete(ex, i === b.length);
            else this.state = State.ChunkEnd;
          }
          break;
        }
        case State.ChunkSize: {
          const e = b.indexOf(CRLF, i);
          if (e < 0) {
            this.keep(b, i, "a chunk size line is too long");
            return;
          }
          const line = b.toString("latin1", i, e);
          const semi = line.indexOf(";");
          const size = Number.parseInt(semi < 0 ? line : line.slice(0, semi), 16);
          if (!Number.isFinite(size) || size < 0) {
            this.fail(new UpstreamConnectionError("the upstream sent a malformed chunked answer"));
            return;
          }
          i = e + 2;
          if (size === 0) this.state = State.Trailers;
          else {
            this.remaining = size;
            this.state = State.ChunkData;
          }
          break;
        }
        case State.ChunkEnd: {
          if (b.length - i < 2) {
            this.keep(b, i, "");
            return;
          }
          if (b[i] !== 13 || b[i + 1] !== 10) {
            this.fail(new UpstreamConnectionError("the upstream sent a malformed chunked answer"));
            return;
          }
          i += 2;
          this.state = State.ChunkSize;
          break;
        }
        case State.Trailers: {
          const e = b.indexOf(CRLF, i);
          if (e < 0) {
            this.keep(b, i, "the upstream's trailers are too long");
            return;
          }
          const empty = e === i;
          i = e + 2;
          if (empty) this.complete(ex, i === b.length);
          break;
        }
        case State.UntilClose: {
          ex.body(i === 0 ? b : b.subarray(i));
          i = b.length;
          break;
        }
        default:
          this.kill();
          return;
      }
    }
  }

  /** keep holds an incomplete line or head for the next packet. */
  private keep(b: Buffer, i: number, tooLong: string): void {
    if (b.length - i > maxHeadBytes) {
      this.fail(new UpstreamConnectionError(tooLong));
      return;
    }
    this.pending = i === 0 ? b : Buffer.from(b.subarray(i));
  }

  /** head parses an answer's head; false when it failed the exchange. */
  private head(ex: Exchange, text: string): boolean {
    const eol = text.indexOf("\r\n");
    const statusLine = eol < 0 ? text : text.slice(0, eol);
    const m = /^HTTP\/1\.([01]) (\d{3})/.exec(statusLine);
    if (!m) {
      this.fail(new UpstreamConnectionError(`the upstream did not answer in HTTP/1.x: ${JSON.stringify(statusLine.slice(0, 80))}`));
      return false;
    }
    const status = Number(m[2]);
    const headers: AnswerHeaders = {};
    if (eol >= 0) {
      for (const line of text.slice(eol + 2).split("\r\n")) {
        const c = line.indexOf(":");
        if (c <= 0) continue;
        const name = line.slice(0, c).trim().toLowerCase();
        const value = line.slice(c + 1).trim();
        const had = headers[name];
        headers[name] = had === undefined ? value : `${had}, ${value}`;
      }
    }
    if (status < 200 && status !== 101) {
      // 100 Continue, 103 Early Hints: the answer follows.
      this.state = State.Head;
      return true;
    }
    const connection = headers.connection?.toLowerCase() ?? "";
    this.keepAlive = m[1] === "1" ? !connection.includes("close") : connection.includes("keep-alive");
    const hint = /timeout=(\d+)/i.exec(headers["keep-alive"] ?? "");
    this.idleMs = hint ? Math.max(0, Number(hint[1]) * 1000 - 1000) : defaultIdleMs;
    const te = headers["transfer-encoding"];
    const length = headers["content-length"];
    if (status === 204 || status === 304) this.state = State.Idle;
    else if (te !== undefined && /chunked/i.test(te)) this.state = State.ChunkSize;
    else if (length !== undefined) {
      const n = Number(length);
      if (!Number.isSafeInteger(n) || n < 0) {
        this.fail(new UpstreamConnectionError("the upstream sent an invalid Content-Length"));
        return false;
      }
      this.remaining = n;
      this.state = n === 0 ? State.Idle : State.Length;
    } else {
      this.state = State.UntilClose;
      this.keepAlive = false;
    }
    ex.head(status, headers);
    return this.exchange === ex;
  }

  /** complete ends the answer: the connection goes back to the pool when it can carry another. */
  private complete(ex: Exchange, clean: boolean): void {
    this.exchange = undefined;
    this.state = State.Idle;
    if (clean && this.keepAlive && !this.dead && this.idleMs > 0) this.pool.release(this);
    else this.kill();
    ex.end();
  }
}

/** Pool is the connections to one upstream: the most recently used idle one is taken first. */
class Pool {
  private readonly idle: Conn[] = [];

  constructor(
    private readonly secure: boolean,
    private readonly host: string,
    private readonly port: number,
  ) {}

  /** acquire takes an idle connection, or opens one (always when `fresh`). */
  acquire(fresh = false): Conn {
    for (let c = fresh ? undefined : this.idle.pop(); c; c = this.idle.pop()) {
      if (c.dead) continue;
      c.wake();
      return c;
    }
    const socket = this.secure
      ? tlsConnect({ host: this.host, port: this.port, servername: isIP(this.host) ? undefined : this.host, ALPNProtocols: ["http/1.1"] })
      : netConnect({ host: this.host, port: this.port });
    socket.setKeepAlive(true, 1000);
    return new Conn(this, socket);
  }

  release(c: Conn): void {
    if (this.idle.length >= maxIdle) {
      c.kill();
      return;
    }
    c.idle();
    this.idle.push(c);
  }

  forget(c: Conn): void {
    const i = this.idle.indexOf(c);
    if (i >= 0) this.idle.splice(i, 1);
  }
}

/** A header value that could end the line it is on is refused. */
const unsafeHeader = /[\r\n\0]/;

/** UpstreamClient is one upstream's base URL and key; it is shared by every call to that upstream. */
export class UpstreamClient {
  private readonly pool: Pool;
  private readonly prefix: string;
  private readonly search: string;
  /** fixed is the request head's lines every request carries. */
  private readonly fixed: string;

  constructor(baseUrl: string, apiKey: string) {
    const url = new URL(baseUrl);
    const secure = url.protocol === "https:";
    if (!secure && url.protocol !== "http:") throw new Error(`an upstream base URL must be http or https: ${baseUrl}`);
    if (unsafeHeader.test(apiKey)) throw new Error("an upstream API key must not contain line breaks");
    // A bracketed IPv6 literal is connected to without its brackets.
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    this.pool = new Pool(secure, host, url.port ? Number(url.port) : secure ? 443 : 80);
    this.prefix = url.pathname.replace(/\/+$/, "");
    this.search = url.search;
    this.fixed = `host: ${url.host}\r\ncontent-type: application/json\r\n${apiKey ? `authorization: Bearer ${apiKey}\r\n` : ""}`;
  }

  /** request is the whole request: head and JSON body, one string for one write. */
  private request(path: string, body: unknown, accept: string, traceparent: string | undefined): string {
    const payload = JSON.stringify(body);
    const trace = traceparent && !unsafeHeader.test(traceparent) ? `traceparent: ${traceparent}\r\n` : "";
    return `POST ${this.prefix}${path}${this.search} HTTP/1.1\r\n${this.fixed}accept: ${accept}\r\n${trace}content-length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`;
  }

  /** dispatch sends a request on a pooled connection; a cancel fails the exchange and drops its connection. */
  private dispatch(request: string, exchange: Exchange, bound: Cancellable): void {
    this.pool.acquire().send(request, exchange);
    bound.onCancel((reason) => {
      exchange.fail(reason);
      exchange.conn.kill();
    });
  }

  /** json POSTs `body` to `path` (e.g. "/chat/completions") and answers the parsed JSON of a 2xx answer. */
  json(path: string, body: unknown, traceparent: string | undefined, bound: Cancellable): Promise<unknown> {
    const request = this.request(path, body, "application/json", traceparent);
    return new Promise<unknown>((resolve, reject) => {
      let settled = false;
      let status = 0;
      let headers: AnswerHeaders = {};
      const chunks: Buffer[] = [];
      let size = 0;
      const exchange: Exchange = {
        conn: undefined as unknown as Conn,
        head(s, h) {
          status = s;
          headers = h;
        },
        body(c) {
          if (status >= 300 && size >= maxErrorBody) return;
          chunks.push(c);
          size += c.length;
        },
        end() {
          if (settled) return;
          settled = true;
          const buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
          if (status < 200 || status >= 300) {
            reject(new UpstreamStatusError(status, errorMessage(buf.toString("utf8")), retryAfter(headers)));
            return;
          }
          let value: unknown;
          try {
            // A malformed answer throws SyntaxError: the service's classify names it.
            value = JSON.parse(buf.toString("utf8"));
          } catch (e) {
            reject(e as Error);
            return;
          }
          resolve(value);
        },
        fail(e) {
          if (settled) return;
          settled = true;
          reject(e);
        },
      };
      this.dispatch(request, exchange, bound);
    });
  }

  /**
   * stream POSTs `body` to `path` and answers, once a 2xx answer's head arrives, an iterator of the
   * parsed `data:` payloads of its Server-Sent Events, up to `data: [DONE]` or the answer's end.
   */
  stream(path: string, body: unknown, traceparent: string | undefined, bound: Cancellable): Promise<AsyncIterator<unknown>> {
    const request = this.request(path, body, "text/event-stream", traceparent);
    return new Promise<AsyncIterator<unknown>>((resolve, reject) => {
      let stream: SseStream | undefined;
      let settled = false;
      let status = 0;
      let headers: AnswerHeaders = {};
      let error = "";
      const decoder = new StringDecoder("utf8");
      const exchange: Exchange = {
        conn: undefined as unknown as Conn,
        head(s, h) {
          status = s;
          headers = h;
          if (s >= 200 && s < 300) {
            settled = true;
            stream = new SseStream(exchange.conn);
            resolve(stream);
          }
        },
        body(c) {
          if (stream) stream.text(decoder.write(c));
          else if (error.length < maxErrorBody) error += decoder.write(c);
        },
        end() {
          if (stream) {
            stream.text(decoder.end());
            stream.finish();
          } else if (!settled) {
            settled = true;
            error += decoder.end();
            reject(new UpstreamStatusError(status, errorMessage(error), retryAfter(headers)));
          }
        },
        fail(e) {
          if (stream) stream.fail(e);
          else if (!settled) {
            settled = true;
            reject(e);
          }
        },
      };
      this.dispatch(request, exchange, bound);
    });
  }
}

/**
 * SseStream reads Server-Sent Events as they arrive: lines split on LF (a CR before it dropped),
 * `data:` lines of one event joined by LF, an event dispatched at its blank line. Each event's data
 * is parsed as JSON; `[DONE]` ends the stream, an `error` event or a payload with an `error` field
 * fails it, as the openai client did. Chunks the caller has not taken yet queue up (the socket is
 * paused beyond 64 of them).
 */
class SseStream implements AsyncIterator<unknown> {
  private queue: unknown[] = [];
  private head = 0;
  private partial = "";
  private data: string | undefined;
  private event = "";
  private done = false;
  private error: Error | undefined;
  private waiting: { resolve(r: IteratorResult<unknown>): void; reject(e: Error): void } | undefined;
  private paused = false;

  constructor(private readonly conn: Conn) {}

  /** text takes the next piece of the answer's text. */
  text(text: string): void {
    if (this.done || text === "") return;
    const s = this.partial ? this.partial + text : text;
    let start = 0;
    for (;;) {
      const nl = s.indexOf("\n", start);
      if (nl < 0) break;
      const end = nl > start && s.charCodeAt(nl - 1) === 13 ? nl - 1 : nl;
      this.line(s, start, end);
      start = nl + 1;
      if (this.done) return;
    }
    this.partial = start === 0 ? s : start === s.length ? "" : s.slice(start);
    if (this.partial.length > maxErrorBody * 16) {
      this.fail(new UpstreamConnectionError("the upstream sent an event line longer than 1 MiB"));
      return;
    }
    if (!this.paused && this.queue.length - this.head >= maxQueued) {
      this.paused = true;
      this.conn.pause();
    }
  }

  private line(s: string, start: number, end: number): void {
    if (start === end) {
      this.dispatch();
      return;
    }
    if (s.startsWith("data: ", start)) {
      const value = s.slice(start + 6, end);
      this.data = this.data === undefined ? value : `${this.data}\n${value}`;
      return;
    }
    if (s.charCodeAt(start) === 58) return; // ":" a comment
    let colon = s.indexOf(":", start);
    if (colon < 0 || colon > end) colon = end;
    const field = s.slice(start, colon);
    let v = colon + 1;
    if (v < end && s.charCodeAt(v) === 32) v++;
    const value = v >= end ? "" : s.slice(v, end);
    if (field === "data") this.data = this.data === undefined ? value : `${this.data}\n${value}`;
    else if (field === "event") this.event = value;
    // id and retry are not used.
  }

  private dispatch(): void {
    const data = this.data;
    const event = this.event;
    this.data = undefined;
    this.event = "";
    if (data === undefined) return;
    if (data.startsWith("[DONE]")) {
      // The answer's end follows and is still read, so that the connection goes back to the pool.
      this.finish();
      return;
    }
    let value: unknown;
    try {
      value = JSON.parse(data);
    } catch (e) {
      this.fail(e as Error);
      return;
    }
    const error = value !== null && typeof value === "object" ? (value as { error?: unknown }).error : undefined;
    if (event === "error" || error) {
      const m = error && typeof error === "object" ? (error as { message?: unknown }).message : error;
      this.fail(new UpstreamStreamError(`the upstream sent an error: ${typeof m === "string" ? m : JSON.stringify(m ?? value)}`));
      return;
    }
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve({ value, done: false });
    } else {
      this.queue.push(value);
    }
  }

  /** finish ends the stream: at `[DONE]`, or the answer's end (an event not ended by a blank line is dropped, as the SSE rules say). */
  finish(): void {
    if (this.done) return;
    this.done = true;
    this.partial = "";
    if (this.paused) {
      this.paused = false;
      this.conn.resume();
    }
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      if (this.error) w.reject(this.error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  /** fail ends the stream with an error, after the chunks already queued; a broken stream's connection is not reused. */
  fail(e: Error): void {
    if (this.done) return;
    this.error = e;
    this.conn.kill();
    this.finish();
  }

  next(): Promise<IteratorResult<unknown>> {
    if (this.head < this.queue.length) {
      const value = this.queue[this.head];
      this.queue[this.head++] = undefined;
      if (this.head === this.queue.length) {
        this.queue.length = 0;
        this.head = 0;
      }
      if (this.paused && this.queue.length - this.head < maxQueued / 2) {
        this.paused = false;
        this.conn.resume();
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.error) return Promise.reject(this.error);
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
  }

  /** return ends the stream early: the connection is closed, so the upstream stops generating. */
  return(): Promise<IteratorResult<unknown>> {
    if (!this.done) this.conn.kill();
    this.queue.length = 0;
    this.head = 0;
    this.done = true;
    return Promise.resolve({ value: undefined, done: true });
  }
}
