import type { Http2ServerRequest } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { headers as authHeaders } from "../shared/auth.js";
import { sendGrpcTrailersOnly } from "../shared/grpc-compat.js";
import { HttpError, type Req, type Res, sendError } from "./http.js";

/** Options of createBodyGuard. */
export interface BodyGuardOptions {
  /**
   * authenticate checks a caller's credential (from the Authorization, X-Api-Key and service token
   * headers) and rejects when it is not good, with a ConnectError whose code says why. Without it,
   * only the presence of a credential is checked.
   */
  authenticate?: (headers: Headers) => Promise<unknown>;
  /** maxUnauthenticatedBodyBytes is the largest body read before its caller's credential is checked; default 64 KiB. */
  maxUnauthenticatedBodyBytes?: number;
}

/** Protocol is whose error shape a refusal takes: the REST edge's (OpenAI's) or an RPC's (Connect or gRPC). */
export type Protocol = "rest" | "rpc";

/**
 * BodyGuard lets a request's body be read only once it is known to be cheap or its caller known to
 * be somebody: `next` runs at once for a request without a body or with a small one (declared, up
 * to maxUnauthenticatedBodyBytes), and after the caller's credential checks out for a larger one
 * or one of unknown length (chunked). Otherwise the request is answered 401 (or the status the
 * check's failure maps to) without a byte of its body read, so a client without a key cannot make
 * the server take in, hold and parse a large body.
 */
export type BodyGuard = (req: Req, res: Res, protocol: Protocol, next: () => void) => void;

const bodiless = new Set(["GET", "HEAD", "OPTIONS"]);

/** bodyIsLarge tells whether a request may carry more than `limit` bytes of body. */
function bodyIsLarge(req: Req, limit: number): boolean {
  if (bodiless.has(req.method ?? "GET")) return false;
  const declared = req.headers["content-length"];
  if (declared !== undefined) {
    const n = Number(declared);
    return !Number.isSafeInteger(n) || n > limit;
  }
  if (req.httpVersionMajor >= 2) return !(req as Http2ServerRequest).stream.endAfterHeaders;
  return req.headers["transfer-encoding"] !== undefined;
}

/** credentialHeaders are the request's headers a credential is in, as the services read them. */
function credentialHeaders(req: Req): Headers {
  const out = new Headers();
  for (const name of [authHeaders.authorization, authHeaders.apiKey, authHeaders.serviceToken, authHeaders.account, authHeaders.liveRun]) {
    const value = req.headers[name];
    if (typeof value === "string") out.set(name, value);
  }
  return out;
}

const missing = "missing API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'";

/** createBodyGuard builds the guard the edge puts in front of every body it or the RPC handler reads. */
export function createBodyGuard(options: BodyGuardOptions = {}): BodyGuard {
  const limit = options.maxUnauthenticatedBodyBytes ?? 64 * 1024;
  return (req, res, protocol, next) => {
    if (!bodyIsLarge(req, limit)) {
      next();
      return;
    }
    const headers = credentialHeaders(req);
    const hasCredential =
      /^Bearer\s+\S/i.test(headers.get(authHeaders.authorization)?.trim() ?? "") ||
      !!headers.get(authHeaders.apiKey)?.trim() ||
      headers.has(authHeaders.serviceToken);
    if (!hasCredential) {
      refuse(req, res, protocol, new ConnectError(missing, Code.Unauthenticated));
      return;
    }
    if (!options.authenticate) {
      next();
      return;
    }
    // A caller that leaves while its credential is checked gets nothing further.
    let gone = false;
    res.once("close", () => (gone = true));
    options.authenticate(headers).then(
      () => {
        if (!gone) next();
      },
      (err: unknown) => refuse(req, res, protocol, err),
    );
  };
}

/** refuse answers a request whose body will not be read, in its protocol's error shape. */
function refuse(req: Req, res: Res, protocol: Protocol, err: unknown): void {
  if (res.headersSent || res.writableEnded) return;
  const ce = ConnectError.from(err);
  if (protocol === "rest") {
    sendError(res, ce.code === Code.Unauthenticated ? new HttpError(401, ce.rawMessage, null, "invalid_api_key") : ce);
    return;
  }
  const contentType = String(req.headers["content-type"] ?? "");
  if (/^application\/grpc/i.test(contentType)) {
    // gRPC says every error in a trailers-only response, written so that grpc-js reads its status.
    sendGrpcTrailersOnly(req, res, ce.code, ce.rawMessage);
    return;
  }
  const data = JSON.stringify({ code: codeToString(ce.code), message: ce.rawMessage });
  res.writeHead(connectStatus[ce.code] ?? 500, { "content-type": "application/json", "content-length": String(Buffer.byteLength(data)) });
  res.end(data);
}

/** connectStatus is the Connect protocol's HTTP status of the codes a credential check fails with. */
const connectStatus: Partial<Record<Code, number>> = {
  [Code.Unauthenticated]: 401,
  [Code.PermissionDenied]: 403,
  [Code.ResourceExhausted]: 429,
  [Code.Unavailable]: 503,
  [Code.DeadlineExceeded]: 504,
  [Code.Canceled]: 499,
};
