import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorMetadata } from "../shared/errors.js";
import { defaultMaxJsonDepth, nestsDeeperThan } from "../shared/json.js";

export type Req = IncomingMessage | Http2ServerRequest;
/** Res is a response of either protocol; the HTTP/2 compatibility API answers the same calls. */
export type Res = ServerResponse;

/** HttpError is an error the edge answers with its own status, in OpenAI's error shape. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/** The one table from Connect codes to HTTP statuses and OpenAI error types. */
const statusByCode: Record<number, [number, string, string]> = {
  [Code.InvalidArgument]: [400, "invalid_request_error", "invalid_request"],
  [Code.FailedPrecondition]: [400, "invalid_request_error", "failed_precondition"],
  [Code.OutOfRange]: [400, "invalid_request_error", "out_of_range"],
  [Code.Unauthenticated]: [401, "authentication_error", "invalid_api_key"],
  [Code.PermissionDenied]: [403, "permission_error", "permission_denied"],
  [Code.NotFound]: [404, "invalid_request_error", "not_found"],
  [Code.AlreadyExists]: [409, "invalid_request_error", "already_exists"],
  [Code.Aborted]: [409, "invalid_request_error", "aborted"],
  [Code.DeadlineExceeded]: [408, "timeout_error", "timeout"],
  [Code.ResourceExhausted]: [429, "rate_limit_error", "rate_limit_exceeded"],
  [Code.Canceled]: [499, "api_error", "cancelled"],
  [Code.Unknown]: [500, "server_error", "workflow_error"],
  [Code.Internal]: [500, "server_error", "internal_error"],
  [Code.DataLoss]: [500, "server_error", "internal_error"],
  [Code.Unimplemented]: [501, "server_error", "not_implemented"],
  [Code.Unavailable]: [503, "server_error", "unavailable"],
};

/** typeByStatus names the OpenAI error type of the edge's own statuses. */
function typeOfStatus(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

/** ErrorBody is OpenAI's error object, plus `run_id` when a run had started and failed. */
export interface ErrorBody {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
  run_id?: string;
}

/**
 * retryAfterSeconds is the `Retry-After` of the statuses worth retrying later: a concurrency limit
 * frees a slot as soon as any run ends, and an unavailable service is starting or stopping.
 */
export const retryAfterSeconds: Record<number, number> = { 429: 1, 503: 5 };

/**
 * errorHeaders are the retry hints of an error answer. A run that raised or timed out would run
 * again in full if the caller retried (the official OpenAI SDKs retry 408 and every 5xx twice by
 * default), so those say `x-should-retry: false`, which the SDKs obey; a limit says when to come back.
 */
function errorHeaders(status: number, code: string | null, runId: string | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  if (status === 408 || (status === 500 && code === "workflow_error")) headers["x-should-retry"] = "false";
  const after = retryAfterSeconds[status];
  if (after !== undefined) headers["retry-after"] = String(after);
  if (runId) headers["x-request-id"] = runId;
  return headers;
}

/**
 * toErrorBody maps any error to its HTTP status, OpenAI error body and headers. `runId` is the run
 * that failed, when one had started: the body's `error.run_id` and `X-Request-Id` name it, so a
 * client can find its record and traceback.
 */
export function toErrorBody(err: unknown, runId?: string): { status: number; body: { error: ErrorBody }; headers: Record<string, string> } {
  let status: number;
  let error: ErrorBody;
  if (err instanceof HttpError) {
    status = err.status;
    error = { message: err.message, type: typeOfStatus(err.status), param: err.param, code: err.code };
  } else {
    const ce = ConnectError.from(err);
    // A size limit is ResourceExhausted too; the service marks it so it answers 413, not 429.
    const sizeLimit = ce.code === Code.ResourceExhausted && ce.metadata.get(errorMetadata.limit) === "size";
    const [mapped, type, code] = sizeLimit
      ? [413, "invalid_request_error", "request_too_large"]
      : (statusByCode[ce.code] ?? [500, "server_error", "internal_error"]);
    status = mapped;
    error = {
      message: ce.rawMessage,
      type,
      param: ce.metadata.get(errorMetadata.param),
      code: ce.metadata.get(errorMetadata.code) ?? code,
    };
  }
  if (runId) error.run_id = runId;
  return { status, body: { error }, headers: errorHeaders(status, error.code, runId) };
}

/** sendJson writes a JSON response. */
export function sendJson(res: Res, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(data)),
    ...headers,
  });
  res.end(data);
}

/**
 * disconnectSignal is aborted when the caller goes away before its response was sent in full (a
 * response that ended normally aborts nothing: an abort builds a DOMException, which costs more
 * than the rest of a small request's cleanup).
 */
export function disconnectSignal(res: Res): AbortSignal {
  const abort = new AbortController();
  res.once("close", () => {
    if (!res.writableFinished) abort.abort();
  });
  return abort.signal;
}

/** sendError writes an error in OpenAI's shape with the status its code maps to; `runId` names the run that failed. */
export function sendError(res: Res, err: unknown, runId?: string): void {
  const { status, body, headers } = toErrorBody(err, runId);
  if (status >= 500 && !(err instanceof HttpError) && ConnectError.from(err).code === Code.Internal) {
    process.stderr.write(`internal error: ${ConnectError.from(err).message}\n`);
  }
  if (res.headersSent) {
    res.end();
    return;
  }
  sendJson(res, status, body, headers);
}

/**
 * readBody reads a request body, refusing it with 413 as soon as it passes `limit` bytes (while
 * reading, so a huge body is never held).
 */
export async function readBody(req: Req, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > limit) {
    throw new HttpError(413, `request body is ${declared} bytes; the limit is ${limit} bytes`, null, "request_too_large");
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      throw new HttpError(413, `request body is larger than the limit of ${limit} bytes`, null, "request_too_large");
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** tooDeep is the 400 for JSON that nests deeper than `max` levels; `what` names the JSON. */
export function tooDeep(max: number, what = "request body", param: string | null = null): HttpError {
  return new HttpError(400, `${what} nests deeper than ${max} levels`, param, "nested_too_deep");
}

/** readJson reads and parses a JSON object body of at most `limit` bytes and `maxDepth` levels; 400 names what is wrong. */
export async function readJson(req: Req, limit: number, maxDepth = defaultMaxJsonDepth): Promise<Record<string, unknown>> {
  const body = await readBody(req, limit);
  if (body.length === 0) throw new HttpError(400, "the request body is empty; send a JSON object", null, "invalid_json");
  const text = body.toString("utf8");
  if (nestsDeeperThan(text, maxDepth)) throw tooDeep(maxDepth);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `the request body is not valid JSON: ${(e as Error).message}`, null, "invalid_json");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new HttpError(400, "the request body must be a JSON object", null, "invalid_json");
  }
  return value as Record<string, unknown>;
}

/** callerHeaders forwards the caller's credential to the services, which authenticate it themselves. */
export function callerHeaders(req: Req): Record<string, string> {
  const out: Record<string, string> = {};
  const authorization = req.headers["authorization"];
  const apiKey = req.headers["x-api-key"];
  if (typeof authorization === "string") out["authorization"] = authorization;
  if (typeof apiKey === "string") out["x-api-key"] = apiKey;
  // The request's trace (the edge's own span once it traces) goes on to the services.
  const traceparent = req.headers.traceparent;
  if (typeof traceparent === "string") out.traceparent = traceparent;
  if (!out["authorization"] && !out["x-api-key"]) {
    throw new HttpError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'", null, "missing_api_key");
  }
  return out;
}

/** Field checks for request bodies: each throws a 400 naming the field. */
export const field = {
  string(body: Record<string, unknown>, name: string, required = false): string | undefined {
    const v = body[name];
    if (v === undefined || v === null) {
      if (required) throw new HttpError(400, `'${name}' is required`, name, "missing_field");
      return undefined;
    }
    if (typeof v !== "string") throw new HttpError(400, `'${name}' must be a string`, name, "invalid_type");
    return v;
  },
  boolean(body: Record<string, unknown>, name: string): boolean | undefined {
    const v = body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "boolean") throw new HttpError(400, `'${name}' must be true or false`, name, "invalid_type");
    return v;
  },
  integer(body: Record<string, unknown>, name: string): number | undefined {
    const v = body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 2 ** 31 - 1) {
      throw new HttpError(400, `'${name}' must be a non-negative integer`, name, "invalid_type");
    }
    return v;
  },
  object(body: Record<string, unknown>, name: string): Record<string, unknown> | undefined {
    const v = body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) throw new HttpError(400, `'${name}' must be a JSON object`, name, "invalid_type");
    return v as Record<string, unknown>;
  },
  stringMap(body: Record<string, unknown>, name: string): Record<string, string> | undefined {
    const v = field.object(body, name);
    if (!v) return undefined;
    for (const [k, val] of Object.entries(v)) {
      if (typeof val !== "string") throw new HttpError(400, `'${name}.${k}' must be a string`, `${name}.${k}`, "invalid_type");
    }
    return v as Record<string, string>;
  },
  objectArray(body: Record<string, unknown>, name: string): Record<string, unknown>[] | undefined {
    const v = body[name];
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v)) throw new HttpError(400, `'${name}' must be an array`, name, "invalid_type");
    v.forEach((item, i) => {
      if (item === null || typeof item !== "object" || Array.isArray(item)) {
        throw new HttpError(400, `'${name}[${i}]' must be a JSON object`, `${name}[${i}]`, "invalid_type");
      }
    });
    return v as Record<string, unknown>[];
  },
};

/** queryInt reads an integer query parameter from 0 to max (0 when absent); 400 names it otherwise. */
export function queryInt(url: URL, name: string, max: number): number {
  const raw = url.searchParams.get(name);
  if (raw === null || raw === "") return 0;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > max) {
    throw new HttpError(400, `query parameter '${name}' must be an integer from 0 to ${max}`, name, "invalid_value");
  }
  return n;
}

/** sseHeaders are the headers of every Server-Sent Events answer. */
export const sseHeaders = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  "x-accel-buffering": "no",
} as const;

/**
 * writeDrained writes to a streaming response and, when the socket's buffer is full, waits for it to
 * drain (or close): a slow reader slows the writer instead of growing a buffer without bound.
 */
export async function writeDrained(res: Res, text: string): Promise<void> {
  if (res.write(text)) return;
  await new Promise<void>((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

/** SseStream is an open Server-Sent Events answer. */
export interface SseStream {
  /** write sends text (whole events), waiting while the client's socket is full. */
  write(text: string): Promise<void>;
  /** close stops the keep-alive comments and ends the answer. */
  close(): void;
}

/**
 * openSse starts a Server-Sent Events answer: its headers at once (so the client knows it started),
 * then `: keep-alive` comments whenever nothing was written for keepAliveMs.
 */
export function openSse(req: Req, res: Res, keepAliveMs: number, headers: Record<string, string>): SseStream {
  res.writeHead(200, {
    ...sseHeaders,
    ...headers,
    ...("httpVersionMajor" in req && req.httpVersionMajor === 1 ? { connection: "keep-alive" } : {}),
  });
  res.flushHeaders();
  let lastWrite = Date.now();
  const write = (text: string) => {
    lastWrite = Date.now();
    return writeDrained(res, text);
  };
  const keepAlive = setInterval(() => {
    if (Date.now() - lastWrite >= keepAliveMs - 5) void write(": keep-alive\n\n");
  }, keepAliveMs);
  return {
    write,
    close() {
      clearInterval(keepAlive);
      res.end();
    },
  };
}
