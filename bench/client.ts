// The benchmarks' HTTP client: node:http over keep-alive connections, the way a load generator
// (wrk, hey, k6) calls a server. The benchmarks run the client in the server's own process, so a
// heavy client (fetch builds streams, AbortSignals and Request objects per call) would be measured
// as the server's time: fetch costs about 0.5 ms of this process's CPU per call here.
import http from "node:http";

/** Caller posts JSON to one server and returns each response's status and body. */
export interface Caller {
  post(path: string, body: string | Uint8Array): Promise<{ status: number; body: string }>;
  /**
   * firstChunk posts and resolves once the response's first body chunk arrives (a stream's first
   * event), with that chunk; `rest` settles when the response has ended, so that the connection is
   * reused and the next call is not timed with this one's tail.
   */
  firstChunk(path: string, body: string | Uint8Array): Promise<{ status: number; chunk: string; rest: Promise<void> }>;
  close(): void;
}

/** createCaller opens keep-alive connections (up to `sockets`) to `baseUrl` with these headers. */
export function createCaller(baseUrl: string, headers: Record<string, string>, sockets = 64): Caller {
  const url = new URL(baseUrl);
  const agent = new http.Agent({ keepAlive: true, maxSockets: sockets });
  /** send posts `body` and hands the response to `onResponse`, failing `reject` on a request error. */
  const send = (path: string, body: string | Uint8Array, onResponse: (res: http.IncomingMessage) => void, reject: (e: Error) => void) => {
    const req = http.request(
      {
        host: url.hostname,
        port: url.port,
        path,
        method: "POST",
        agent,
        headers: { ...headers, "content-length": Buffer.byteLength(body) },
      },
      (res) => {
        res.on("error", reject);
        onResponse(res);
      },
    );
    req.on("error", reject);
    req.end(body);
  };
  return {
    post(path, body) {
      return new Promise((resolve, reject) =>
        send(
          path,
          body,
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
          },
          reject,
        ),
      );
    },
    firstChunk(path, body) {
      return new Promise((resolve, reject) =>
        send(
          path,
          body,
          (res) => {
            const rest = new Promise<void>((done, failed) => {
              res.on("end", done);
              res.on("error", failed);
            });
            res.once("data", (c: Buffer) => {
              resolve({ status: res.statusCode ?? 0, chunk: c.toString("utf8"), rest });
              res.resume();
            });
            res.once("end", () => resolve({ status: res.statusCode ?? 0, chunk: "", rest }));
          },
          reject,
        ),
      );
    },
    close: () => agent.destroy(),
  };
}
