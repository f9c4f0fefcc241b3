// What the Datastore's benchmarks share with their child processes: NDJSON bodies, how they are
// sent (from this process or from a client process of its own), and waiting for a quiet database.
import { execFile } from "node:child_process";
import http from "node:http";
import { Readable } from "node:stream";
import Database from "better-sqlite3";

/** ndjson makes the body of an upload of `n` records made by `line`, in chunks of 1,000 lines. */
export function* ndjson(n: number, line: (i: number) => string): Generator<Buffer> {
  for (let i = 0; i < n; i += 1000) {
    let s = "";
    for (let j = i; j < Math.min(n, i + 1000); j++) s += line(j) + "\n";
    yield Buffer.from(s);
  }
}

/** upload streams an NDJSON body in one POST, as a large upload does. */
export function upload(url: string, apiKey: string, store: string, body: Iterable<Buffer>): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: u.hostname,
        port: u.port,
        path: `/v1/datastores/${store}/records`,
        method: "POST",
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/x-ndjson" },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("error", reject);
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
      },
    );
    req.on("error", reject);
    Readable.from(body).pipe(req);
  });
}

/**
 * sendFile posts an NDJSON file to a store from a node process of its own, as a client elsewhere
 * does: a large body's reads and writes are then not this process's, nor its timings'.
 */
export function sendFile(url: string, apiKey: string, store: string, file: string): Promise<{ status: number; body: string }> {
  const client = `
    const [url, apiKey, store, file] = process.argv.slice(1);
    const u = new URL(url);
    const req = require("node:http").request(
      { host: u.hostname, port: u.port, path: "/v1/datastores/" + store + "/records", method: "POST",
        headers: { authorization: "Bearer " + apiKey, "content-type": "application/x-ndjson" } },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => process.stdout.write(JSON.stringify({ status: res.statusCode, body })));
      },
    );
    req.on("error", (e) => { console.error(e.message); process.exitCode = 1; });
    require("node:fs").createReadStream(file).pipe(req);`;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ["-e", client, url, apiKey, store, file], { maxBuffer: 1 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`the upload's client failed: ${stderr || err.message}`)) : resolve(JSON.parse(stdout)),
    );
  });
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** checkpointed waits until a database's WAL has been copied into its file (by whichever connection). */
export async function checkpointed(file: string): Promise<void> {
  const db = new Database(file);
  try {
    for (const until = Date.now() + 120_000; Date.now() < until; ) {
      const [r] = db.pragma("wal_checkpoint(PASSIVE)") as { busy: number; log: number; checkpointed: number }[];
      if (r.busy === 0 && r.log === r.checkpointed) return;
      await sleep(200);
    }
  } finally {
    db.close();
  }
}
