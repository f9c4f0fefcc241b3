import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { Readable } from "node:stream";

const httpAgent = new HttpAgent({ keepAlive: true, maxSockets: 256 });
const httpsAgent = new HttpsAgent({ keepAlive: true, maxSockets: 256 });

/**
 * httpFetch is the `fetch` the openai client uses for upstreams: node:http with keep-alive agents.
 * Measured here, undici's fetch cost about twice the CPU per request of node:http, which is most
 * of the proxy's added latency; the body is handed on as a stream, never buffered.
 */
export function httpFetch(input: string | URL | Request, init: RequestInit = {}): Promise<Response> {
  const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
  const secure = url.protocol === "https:";
  const headers: Record<string, string> = {};
  new Headers(init.headers).forEach((v, k) => {
    headers[k] = v;
  });
  const body = init.body;
  if (body !== undefined && body !== null && typeof body !== "string" && !(body instanceof Uint8Array)) {
    // The openai client sends JSON strings for every call the proxy makes; anything else goes to the platform's fetch.
    return fetch(input, init);
  }
  return new Promise<Response>((resolve, reject) => {
    const signal = init.signal ?? undefined;
    if (signal?.aborted) return reject(signal.reason);
    const req = (secure ? httpsRequest : httpRequest)(
      url,
      { method: init.method ?? "GET", headers, agent: secure ? httpsAgent : httpAgent, signal },
      (res: IncomingMessage) => {
        const responseHeaders = new Headers();
        for (const [k, v] of Object.entries(res.headers)) {
          if (Array.isArray(v)) for (const x of v) responseHeaders.append(k, x);
          else if (v !== undefined) responseHeaders.set(k, v);
        }
        const status = res.statusCode ?? 502;
        const init2 = { status, statusText: res.statusMessage, headers: responseHeaders };
        if (status === 204 || status === 304 || init.method === "HEAD") return resolve(new Response(null, init2));
        if (/^text\/event-stream/i.test(res.headers["content-type"] ?? "")) {
          // A stream is handed on chunk by chunk.
          return resolve(new Response(Readable.toWeb(res) as ReadableStream<Uint8Array>, init2));
        }
        // A JSON answer is parsed whole by the client anyway: read it here, without a web stream.
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.once("end", () => resolve(new Response(Buffer.concat(chunks), init2)));
        res.once("error", reject);
        res.once("close", () => {
          if (!res.complete) reject(new Error("the upstream closed the connection mid-answer"));
        });
      },
    );
    req.on("error", reject);
    req.end(body ?? undefined);
  });
}
