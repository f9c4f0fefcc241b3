import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { Http2ServerResponse } from "node:http2";
import { Code } from "@connectrpc/connect";

/** Req is what these wrappers read of a request, HTTP/1.1 or HTTP/2 alike. */
type Req = { headers: IncomingHttpHeaders; url?: string };
/** NodeHandler is a Node request handler, such as connectNodeAdapter's (typed as its caller's). */
type NodeHandler<Q extends Req, S> = (req: Q, res: S) => void;

/**
 * encodeGrpcMessage percent-encodes a status message for the grpc-message header as the gRPC spec
 * says (doc/PROTOCOL-HTTP2.md, "Percent-Encoded"): the message's UTF-8 bytes, every one outside
 * printable ASCII (0x20–0x7E) and '%' itself as %XX, everything else as it is.
 *
 * Connect-ES encodes it with encodeURIComponent instead, which also escapes ':', '/', '#', '?' and
 * the other characters URIs reserve. grpc-go and grpcio decode any %XX, but grpc-js decodes with
 * decodeURI, which leaves those escapes alone: its callers read "ValueError%3A boom". Under the
 * spec's encoding there are no such escapes, so all three read the message as it was sent.
 */
export function encodeGrpcMessage(message: string): string {
  let out = "";
  for (const byte of Buffer.from(message, "utf8")) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/**
 * reencode turns a grpc-message value Connect-ES wrote (encodeURIComponent) into the spec's
 * encoding. A value that does not decode is sent as it is.
 */
function reencode(value: unknown): unknown {
  if (typeof value !== "string") return value;
  try {
    return encodeGrpcMessage(decodeURIComponent(value));
  } catch {
    return value;
  }
}

function fixHeaders(headers: unknown): void {
  if (headers === null || typeof headers !== "object" || Array.isArray(headers)) return;
  const record = headers as OutgoingHttpHeaders;
  for (const name of Object.keys(record)) {
    if (name.toLowerCase() === "grpc-message") record[name] = reencode(record[name]) as string;
  }
}

/** isGrpc tells a gRPC request (application/grpc, application/grpc+proto, …) from gRPC-Web and the rest. */
function isGrpc(req: Req): boolean {
  const type = String(req.headers["content-type"] ?? "").toLowerCase();
  return type === "application/grpc" || type.startsWith("application/grpc+") || type.startsWith("application/grpc;");
}

/**
 * grpcMessageEncoding wraps a Node handler (connectNodeAdapter's) so that on gRPC requests the
 * grpc-message header and trailer it writes are in the spec's encoding (see encodeGrpcMessage):
 * grpc-js clients then read error messages exactly. gRPC-Web and Connect responses are left as
 * Connect-ES writes them, for the Connect-ES clients that read them with decodeURIComponent.
 */
export function grpcMessageEncoding<Q extends Req, S>(handler: NodeHandler<Q, S>): NodeHandler<Q, S> {
  return (req, res) => {
    if (isGrpc(req)) {
      const r = res as unknown as ServerResponse;
      const writeHead = r.writeHead;
      r.writeHead = function (this: ServerResponse, ...args: unknown[]) {
        for (const arg of args.slice(1)) fixHeaders(arg);
        return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
      } as typeof r.writeHead;
      const setHeader = r.setHeader;
      r.setHeader = function (this: ServerResponse, name: string, value: number | string | readonly string[]) {
        const fixed = name.toLowerCase() === "grpc-message" ? (reencode(value) as typeof value) : value;
        return setHeader.call(this, name, fixed);
      } as typeof r.setHeader;
      const addTrailers = r.addTrailers;
      r.addTrailers = function (this: ServerResponse, trailers: OutgoingHttpHeaders | readonly [string, string][]) {
        fixHeaders(trailers);
        return addTrailers.call(this, trailers);
      } as typeof r.addTrailers;
    }
    handler(req, res);
  };
}

/**
 * sendGrpcTrailersOnly answers a gRPC or gRPC-Web request with an error and no message: HTTP 200
 * and the status in the response's only HEADERS frame (gRPC's "Trailers-Only"), with `extra`
 * headers (the error's metadata and details) beside it. On HTTP/2 it
 * writes to the stream itself: Node's compatibility response sends its headers without END_STREAM
 * and its trailers apart, which grpc-js reads as "Call ended without gRPC status" (INTERNAL).
 */
export function sendGrpcTrailersOnly(req: Req, res: unknown, code: Code, message: string, extra: OutgoingHttpHeaders = {}): void {
  const headers = {
    ...extra,
    "content-type": String(req.headers["content-type"] ?? "application/grpc").split(";")[0],
    "grpc-status": String(code),
    "grpc-message": encodeGrpcMessage(message),
  };
  const stream = (res as Partial<Http2ServerResponse>).stream;
  if (stream) {
    if (stream.headersSent || stream.destroyed) return;
    stream.respond({ ":status": 200, ...headers }, { endStream: true });
    return;
  }
  const r = res as ServerResponse;
  if (r.headersSent) return;
  r.writeHead(200, headers);
  r.end();
}

/**
 * grpcUnimplemented is a fallback for connectNodeAdapter: a gRPC or gRPC-Web request for a path no
 * service serves gets what gRPC clients expect, grpc-status 12 (UNIMPLEMENTED) in a trailers-only
 * response; any other request goes to `otherwise`.
 */
export function grpcUnimplemented<Q extends Req, S>(otherwise: NodeHandler<Q, S>): NodeHandler<Q, S> {
  return (req, res) => {
    if (
      !String(req.headers["content-type"] ?? "")
        .toLowerCase()
        .startsWith("application/grpc")
    ) {
      otherwise(req, res);
      return;
    }
    const path = (req.url ?? "/").split("?")[0];
    sendGrpcTrailersOnly(req, res, Code.Unimplemented, `unknown method ${path}: this server does not serve it`);
  };
}
