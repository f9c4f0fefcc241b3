// The ModelProxy's client of OpenAI-compatible upstreams: one POST on node:http with a keep-alive
// agent, the JSON body out and one JSON.parse of the answer in; for streams, the SSE `data:` lines
// parsed straight off the socket. Retries, timeouts and fallbacks are the service's (each attempt
// is recorded), so this client makes exactly one request per call and never retries on its own.
//
// It replaces the `openai` npm client and a fetch() shim it needed: a CPU profile of the proxied
// path put that pair (web streams, Response and Headers objects, an AbortSignal per request, the
// SDK's header building and logging) at about a third of the proxy's added CPU per call.
import { type ClientRequest, Agent as HttpAgent, request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";

const httpAgent = new HttpAgent({ keepAlive: true, maxSockets: 256 });
const httpsAgent = new HttpsAgent({ keepAlive: true, maxSockets: 256 });

/** At most this much of an error answer's body is read (its message is all that is kept). */
const maxErrorBody = 64 * 1024;
/** A stream's parsed chunks beyond this many waiting for the caller pause the socket. */
const maxQueued = 64;

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

/** retryAfter reads Retry-After (seconds or an HTTP date) and retry-after-ms, capped at 5 s. */
export function retryAfter(headers: IncomingMessage["headers"]): number | undefined {
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

type Settle<T> = { resolve(v: T): void; reject(e: Error): void };

/** UpstreamClient is one upstream's base URL and key; it is shared by every call to that upstream. */
export class UpstreamClient {
  private readonly secure: boolean;
  private readonly host: string;
  private readonly port: number;
  private readonly prefix: string;
  private readonly authorization: string | undefined;

  constructor(baseUrl: string, apiKey: string) {
    const url = new URL(baseUrl);
    this.secure = url.protocol === "https:";
    // A bracketed IPv6 literal is passed to node:http without its brackets.
    this.host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    this.port = url.port ? Number(url.port) : this.secure ? 443 : 80;
    this.prefix = url.pathname.replace(/\/+$/, "") + url.search;
    this.authorization = apiKey ? `Bearer ${apiKey}` : undefined;
  }

  /** json POSTs `body` to `path` (e.g. "/chat/completions") and answers the parsed JSON of a 2xx answer. */
  json(path: string, body: unknown, traceparent: string | undefined, bound: Cancellable): Promise<unknown> {
    return new Promise<unknown>((resolve, reject) => {
      this.send(path, body, "application/json", traceparent, bound, { resolve, reject }, (res, settle) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
          let value: unknown;
          try {
            // A malformed answer throws SyntaxError: the service's classify names it.
            value = JSON.parse(buf.toString("utf8"));
          } catch (e) {
            return settle.reject(e as Error);
          }
          settle.resolve(value);
        });
      });
    });
  }

  /**
   * stream POSTs `body` to `path` and answers, once a 2xx answer's headers arrive, an iterator of
   * the parsed `data:` payloads of its Server-Sent Events, up to `data: [DONE]` or the answer's end.
   */
  stream(path: string, body: unknown, traceparent: string | undefined, bound: Cancellable): Promise<AsyncIterator<unknown>> {
    return new Promise<AsyncIterator<unknown>>((resolve, reject) => {
      this.send(path, body, "text/event-stream", traceparent, bound, { resolve, reject }, (res, settle, req, failure) => {
        settle.resolve(new SseStream(req, res, failure));
      });
    });
  }

  /**
   * send makes the request; `onOk` gets a 2xx answer. Any other status is read (up to 64 KiB) and
   * rejected as UpstreamStatusError; a connection refused, reset or closed mid-answer as
   * UpstreamConnectionError; a cancel with its reason. `settle` settles once, whatever comes first.
   */
  private send<T>(
    path: string,
    body: unknown,
    accept: string,
    traceparent: string | undefined,
    bound: Cancellable,
    outer: Settle<T>,
    onOk: (res: IncomingMessage, settle: Settle<T>, req: ClientRequest, failure: () => Error | undefined) => void,
  ): void {
    let settled = false;
    let cancelled: Error | undefined;
    let res: IncomingMessage | undefined;
    const settle: Settle<T> = {
      resolve(v) {
        if (settled) return;
        settled = true;
        outer.resolve(v);
      },
      reject(e) {
        if (settled) return;
        settled = true;
        outer.reject(e);
      },
    };
    const payload = JSON.stringify(body);
    const headers: OutgoingHttpHeaders = {
      accept,
      "content-type": "application/json",
      "content-length": Buffer.byteLength(payload),
    };
    if (this.authorization) headers.authorization = this.authorization;
    if (traceparent) headers.traceparent = traceparent;
    const req = (this.secure ? httpsRequest : httpRequest)({
      host: this.host,
      port: this.port,
      method: "POST",
      path: this.prefix + path,
      headers,
      agent: this.secure ? httpsAgent : httpAgent,
    });
    const lost = (what: string, e?: Error) => cancelled ?? new UpstreamConnectionError(e ? `${what}: ${e.message}` : what);
    // What ended the answer early, for a stream to report (undefined while it is fine).
    const failure = () => (res && !res.complete ? lost("the upstream closed the connection mid-answer") : undefined);
    req.on("error", (e) => settle.reject(lost(res ? "the connection was lost mid-answer" : "connection failed", e)));
    req.on("response", (r: IncomingMessage) => {
      res = r;
      r.on("error", () => {}); // reported by "close" below
      r.on("close", () => {
        if (!r.complete) settle.reject(lost("the upstream closed the connection mid-answer"));
      });
      const status = r.statusCode ?? 0;
      if (status >= 200 && status < 300) return onOk(r, settle, req, failure);
      r.setEncoding("utf8");
      let text = "";
      r.on("data", (c: string) => {
        if (text.length < maxErrorBody) text += c;
      });
      r.on("end", () => settle.reject(new UpstreamStatusError(status, errorMessage(text), retryAfter(r.headers))));
    });
    bound.onCancel((reason) => {
      cancelled = reason;
      settle.reject(reason);
      req.destroy(reason);
    });
    req.end(payload);
  }
}

/**
 * SseStream reads Server-Sent Events off a response as they arrive: lines split on LF (a CR before
 * it dropped), `data:` lines of one event joined by LF, an event dispatched at its blank line. Each
 * event's data is parsed as JSON; `[DONE]` ends the stream, an `error` event or a payload with an
 * `error` field fails it, as the openai client did. Chunks the caller has not taken yet queue up
 * (the socket is paused beyond 64 of them).
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

  constructor(
    private readonly req: ClientRequest,
    private readonly res: IncomingMessage,
    failure: () => Error | undefined,
  ) {
    res.setEncoding("utf8");
    res.on("data", (text: string) => this.onText(text));
    res.on("end", () => {
      // An event not ended by a blank line before the answer's end is dropped, as the SSE rules say.
      this.finish();
    });
    res.on("close", () => {
      const e = failure();
      if (e) this.fail(e);
      else this.finish();
    });
    // A cancel (timeout) before the answer's end destroys the request: reported by "close".
    req.on("error", () => {});
  }

  private onText(text: string): void {
    if (this.done) return;
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
    if (!this.paused && this.queue.length - this.head >= maxQueued) {
      this.paused = true;
      this.res.pause();
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
    const c = s.charCodeAt(start);
    if (c === 58) return; // ":" a comment
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
      // The answer's end follows: read it, so that the connection goes back to the pool.
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

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.partial = "";
    if (this.paused) {
      this.paused = false;
      this.res.resume();
    }
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      if (this.error) w.reject(this.error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  private fail(e: Error): void {
    if (this.done) return;
    this.error = e;
    // A broken stream's connection is not reused.
    this.req.destroy();
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
        this.res.resume();
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.error) return Promise.reject(this.error);
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
  }

  /** return ends the stream early: the request is closed, so the upstream stops generating. */
  return(): Promise<IteratorResult<unknown>> {
    if (!this.done || !this.res.complete) this.req.destroy();
    this.queue.length = 0;
    this.head = 0;
    this.done = true;
    return Promise.resolve({ value: undefined, done: true });
  }
}
