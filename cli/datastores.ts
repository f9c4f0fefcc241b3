import { closeSync, createReadStream, openSync, readFileSync, readSync, statSync } from "node:fs";
import { createInterface } from "node:readline";
import { CliError, call, need, parse, printJson, type Server, serverOf, table } from "./http.js";
import type { CliIo } from "./io.js";

export const datastoresUsage = `usage: shaker datastores list
       shaker datastores create NAME [--embedding-model MODEL]
       shaker datastores load NAME FILE [--batch N] [--progress]  (FILE: NDJSON, one record a line, or a JSON array)
       shaker datastores search NAME QUERY [--mode keyword|vector|hybrid] [--limit N] [--json]
  records are {id, text, metadata?, vector?}; a vector is numbers, or the base64 of its float32s.`;

/** eta formats the seconds left as m:ss (or h:mm:ss). */
function eta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return s >= 3600 ? `${Math.floor(s / 3600)}:${mm}:${ss}` : `${Math.floor(s / 60)}:${ss}`;
}

/**
 * Progress shows how a load goes on stderr: on a terminal (or with --progress) a bar redrawn in
 * place with records/s and the time left, at most 10 times a second; otherwise (a log, CI) one
 * plain line every `lineEveryMs` (10 s) with the same figures.
 */
export class Progress {
  private readonly started = performance.now();
  private lastDraw = 0;
  private lastLine: number;
  constructor(
    private readonly label: string,
    private readonly io: CliIo,
    private readonly draw: boolean,
    private readonly lineEveryMs = 10_000,
  ) {
    this.lastLine = this.started;
  }

  update(fraction: number, records: number, force = false): void {
    const now = performance.now();
    const f = Math.min(1, Math.max(0, fraction));
    const elapsed = (now - this.started) / 1000;
    const left = f > 0 ? (elapsed * (1 - f)) / f : Number.POSITIVE_INFINITY;
    const figures = `${Math.round(f * 100)}% ${records} records ${this.rate(records)} records/s ETA ${eta(left)}`;
    if (this.draw) {
      if (!force && now - this.lastDraw < 100) return;
      this.lastDraw = now;
      const width = 30;
      const done = Math.round(f * width);
      this.io.stderr(`\r${this.label} [${"#".repeat(done)}${"-".repeat(width - done)}] ${figures}\x1b[K`);
    } else if (now - this.lastLine >= this.lineEveryMs) {
      this.lastLine = now;
      this.io.stderr(`${this.label}: ${figures}\n`);
    }
  }

  rate(records: number): number {
    const seconds = (performance.now() - this.started) / 1000;
    return seconds > 0 ? Math.round(records / seconds) : records;
  }

  seconds(): number {
    return (performance.now() - this.started) / 1000;
  }

  end(): void {
    if (this.draw) this.io.stderr("\n");
  }
}

/** batchesOf reads FILE as NDJSON (streamed line by line) or as a JSON array; yields batches of records with how far through the file it is. */
async function* batchesOf(file: string, size: number): AsyncGenerator<{ records: unknown[]; fraction: number }> {
  let bytes: number;
  try {
    bytes = statSync(file).size;
  } catch (e) {
    throw new CliError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
  }
  const fd = openSync(file, "r");
  const start = Buffer.alloc(64);
  const got = readSync(fd, start, 0, 64, 0);
  closeSync(fd);
  const head = start
    .subarray(0, got)
    .toString("utf8")
    .replace(/^\uFEFF/, "")
    .trimStart();
  if (head.startsWith("[")) {
    let all: unknown;
    try {
      all = JSON.parse(readFileSync(file, "utf8"));
    } catch (e) {
      throw new CliError(`${file} is not a valid JSON array: ${(e as Error).message}`);
    }
    const records = all as unknown[];
    for (let i = 0; i < records.length; i += size) {
      yield { records: records.slice(i, i + size), fraction: Math.min(records.length, i + size) / records.length };
    }
    return;
  }
  const stream = createReadStream(file, "utf8");
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  let batch: unknown[] = [];
  let lineNo = 0;
  let read = 0;
  for await (const line of lines) {
    lineNo++;
    read += Buffer.byteLength(line) + 1;
    if (!line.trim()) continue;
    try {
      batch.push(JSON.parse(line));
    } catch (e) {
      throw new CliError(`${file}:${lineNo}: not a JSON record (${(e as Error).message})`);
    }
    if (batch.length >= size) {
      yield { records: batch, fraction: bytes ? read / bytes : 1 };
      batch = [];
    }
  }
  if (batch.length) yield { records: batch, fraction: 1 };
}

async function load(io: CliIo, server: Server, name: string, file: string, batchSize: number, forceBar: boolean): Promise<void> {
  // SHAKER_PROGRESS_EVERY_MS: how often a non-terminal stderr gets a progress line (default 10 s).
  const every = Number(io.env.SHAKER_PROGRESS_EVERY_MS ?? 10_000);
  const progress = new Progress(`loading ${name}`, io, forceBar || io.stderrIsTTY, every);
  let total = 0;
  let embedded = 0;
  for await (const { records, fraction } of batchesOf(file, batchSize)) {
    const ndjson = records.map((r) => JSON.stringify(r)).join("\n") + "\n";
    let resp;
    try {
      resp = await call(server, "POST", `/v1/datastores/${encodeURIComponent(name)}/records`, {
        raw: ndjson,
        contentType: "application/x-ndjson",
      });
    } catch (e) {
      progress.end();
      throw new CliError(
        `after ${total} records: ${(e as Error).message.replace(/records\[(\d+)\]/, (_m, i) => `record ${total + Number(i) + 1}`)}`,
      );
    }
    total += Number(resp.data?.upserted ?? records.length);
    embedded += Number(resp.data?.embedded ?? 0);
    progress.update(fraction, total);
  }
  progress.update(1, total, true);
  progress.end();
  const seconds = progress.seconds();
  io.stderr(
    `loaded ${total} records into ${name} in ${seconds.toFixed(2)}s (${progress.rate(total)} records/s${embedded ? `, ${embedded} embedded` : ""})\n`,
  );
}

/** runDatastores manages the account's record stores. */
export async function runDatastores(argv: string[], io: CliIo): Promise<void> {
  const { values, positionals } = parse(
    argv,
    {
      "embedding-model": { type: "string" },
      mode: { type: "string" },
      limit: { type: "string" },
      batch: { type: "string" },
      progress: { type: "boolean" },
      json: { type: "boolean" },
    },
    datastoresUsage,
  );
  const server = serverOf(values, io.env);
  const [sub] = positionals;
  switch (sub) {
    case "list": {
      const resp = await call(server, "GET", "/v1/datastores");
      if (values.json) return printJson(io, resp.data);
      const stores: any[] = resp.data;
      if (!stores.length) {
        io.stdout("no datastores; create one with: shaker datastores create NAME\n");
        return;
      }
      io.stdout(
        table(
          ["NAME", "RECORDS", "EMBEDDING MODEL", "CREATED"],
          stores.map((s) => [s.name, String(s.record_count ?? ""), s.embedding_model || "-", String(s.created_at ?? "")]),
        ),
      );
      return;
    }
    case "create": {
      const name = need(positionals, 1, "NAME", datastoresUsage);
      const body: Record<string, unknown> = { name };
      if (values["embedding-model"]) body.embedding_model = values["embedding-model"];
      const resp = await call(server, "POST", "/v1/datastores", { body });
      io.stdout(`created datastore ${resp.data?.name ?? name}\n`);
      return;
    }
    case "load": {
      const name = need(positionals, 1, "NAME", datastoresUsage);
      const file = need(positionals, 2, "FILE", datastoresUsage);
      const batch = values.batch === undefined ? 500 : Number(values.batch);
      if (!Number.isInteger(batch) || batch <= 0) throw new CliError("--batch must be a positive whole number", 2);
      return load(io, server, name, file, batch, values.progress === true);
    }
    case "search": {
      const name = need(positionals, 1, "NAME", datastoresUsage);
      const query = need(positionals, 2, "QUERY", datastoresUsage);
      const body: Record<string, unknown> = { query };
      if (values.mode) body.mode = values.mode;
      if (values.limit) {
        const n = Number(values.limit);
        if (!Number.isInteger(n) || n <= 0) throw new CliError("--limit must be a positive whole number", 2);
        body.limit = n;
      }
      const resp = await call(server, "POST", `/v1/datastores/${encodeURIComponent(name)}/search`, { body });
      const hits: any[] = resp.data;
      if (values.json) return printJson(io, hits);
      if (!hits.length) {
        io.stdout("no matches\n");
        return;
      }
      for (const h of hits) {
        const text = String(h.text ?? "").replace(/\s+/g, " ");
        io.stdout(`${Number(h.score).toFixed(3)}  ${h.id}  ${text.length > 100 ? text.slice(0, 97) + "..." : text}\n`);
      }
      return;
    }
    case undefined:
      throw new CliError(`missing subcommand\n${datastoresUsage}`, 2);
    default:
      throw new CliError(`unknown datastores subcommand '${sub}'\n${datastoresUsage}`, 2);
  }
}
