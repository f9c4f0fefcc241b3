import type { IncomingMessage } from "node:http";
import { type ParseArgsConfig, parseArgs } from "node:util";
import type { CliIo } from "./io.js";

/** CliError is a failure the command reports as one line on stderr, exiting with `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** HelpRequested ends a command asked for --help: main prints `text` on stdout and exits 0. */
export class HelpRequested extends CliError {
  constructor(readonly text: string) {
    super("help requested", 0);
  }
}

/** Options every command that talks to a server takes. */
export const serverOptions = {
  server: { type: "string" },
  "api-key": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsConfig["options"];

/** Server is where a command sends its REST calls, and with which key. */
export interface Server {
  url: string;
  apiKey: string;
}

/** parse reads a command's arguments with node:util parseArgs; a mistake is a usage error (exit 2). */
export function parse<O extends NonNullable<ParseArgsConfig["options"]>>(argv: string[], options: O, usage: string) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { ...serverOptions, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new CliError(`${(e as Error).message}\n${usage}`, 2);
  }
  if ((parsed.values as { help?: boolean }).help) throw new HelpRequested(usage + "\n");
  return parsed;
}

/** serverOf picks the server from --server/--api-key, else SHAKER_URL/SHAKER_API_KEY (unless empty), else the local default. */
export function serverOf(values: { server?: string | boolean; "api-key"?: string | boolean }, env: NodeJS.ProcessEnv): Server {
  const raw = (typeof values.server === "string" ? values.server : undefined) ?? (env.SHAKER_URL || "http://127.0.0.1:8080");
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CliError(`--server '${raw}' is not a URL (e.g. http://127.0.0.1:8080)`, 2);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new CliError(`--server '${raw}' must be an http:// or https:// URL`, 2);
  const apiKey = (typeof values["api-key"] === "string" ? values["api-key"] : undefined) ?? env.SHAKER_API_KEY ?? "";
  return { url: url.toString().replace(/\/+$/, ""), apiKey };
}

/** need returns the positional argument at `i`, or fails naming it. */
export function need(positionals: string[], i: number, name: string, usage: string): string {
  const v = positionals[i];
  if (v === undefined || v === "") throw new CliError(`missing ${name}\n${usage}`, 2);
  return v;
}

/** ApiError is a REST call that answered with an error status. */
export class ApiError extends CliError {
  constructor(
    readonly status: number,
    message: string,
    readonly body: unknown,
    /** serverMessage is the server's error message as sent. */
    readonly serverMessage: string,
  ) {
    super(message);
  }
}

/** Options of call. */
export interface CallOptions {
  body?: unknown;
  /** raw is sent as the body as is, with `contentType`. */
  raw?: string;
  contentType?: string;
  signal?: AbortSignal;
}

/** Reply is the answer to a REST call: what the commands read of it (a subset of fetch's Response). */
export interface Reply {
  status: number;
  ok: boolean;
  statusText: string;
  headers: { get(name: string): string | null };
  /** body yields the response's bytes as they arrive (read it, or text() or json(), once). */
  body: AsyncIterable<Uint8Array>;
  text(): Promise<string>;
  json(): Promise<unknown>;
}

/**
 * send makes a REST call and returns the response; a server that cannot be reached is one clear
 * CliError. It uses node:http, not fetch: fetch's first call loads undici, which costs a light
 * command more time than everything else it does (50-100 ms).
 */
export async function send(server: Server, method: string, path: string, options: CallOptions = {}): Promise<Reply> {
  const headers: Record<string, string | number> = {};
  if (server.apiKey) headers.authorization = `Bearer ${server.apiKey}`;
  let body: string | undefined;
  if (options.raw !== undefined) {
    body = options.raw;
    headers["content-type"] = options.contentType ?? "application/octet-stream";
  } else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers["content-type"] = "application/json";
  }
  if (body !== undefined) headers["content-length"] = Buffer.byteLength(body);
  const url = new URL(server.url + path);
  const { request } = url.protocol === "https:" ? await import("node:https") : await import("node:http");
  let res: IncomingMessage;
  try {
    res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request(url, { method, headers, signal: options.signal }, resolve);
      req.on("error", reject);
      req.end(body);
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.name === "AbortError") throw e;
    const why = err.code === "ECONNREFUSED" ? "connection refused" : (err.code ?? err.message);
    throw new CliError(`cannot reach Shaker at ${server.url} (${why}); is \`shaker serve\` running? (set --server or SHAKER_URL)`);
  }
  const status = res.statusCode ?? 0;
  const text = async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  };
  return {
    status,
    ok: status >= 200 && status < 300,
    statusText: res.statusMessage ?? "",
    headers: {
      get(name) {
        const v = res.headers[name.toLowerCase()];
        return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
      },
    },
    body: res,
    text,
    json: async () => JSON.parse(await text()),
  };
}

/** errorOf turns an error response into an ApiError carrying the server's message. */
export async function errorOf(res: Reply): Promise<ApiError> {
  const text = await res.text();
  let body: any = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  const message = typeof body?.error?.message === "string" ? body.error.message : text.slice(0, 300) || res.statusText;
  const hint = res.status === 401 ? " (set --api-key or SHAKER_API_KEY)" : "";
  return new ApiError(res.status, `${message}${hint} (HTTP ${res.status})`, body, message);
}

/** call makes a REST call and returns the parsed JSON answer, throwing ApiError on an error status. */
export async function call<T = any>(server: Server, method: string, path: string, options: CallOptions = {}): Promise<T> {
  const res = await send(server, method, path, options);
  if (!res.ok) throw await errorOf(res);
  const text = await res.text();
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new CliError(`the server answered ${method} ${path} with something that is not JSON: ${text.slice(0, 200)}`);
  }
}

/** printJson writes a value as indented JSON on stdout. */
export function printJson(io: CliIo, value: unknown): void {
  io.stdout(JSON.stringify(value, null, 2) + "\n");
}

/** textOf shows an emitted or returned value: strings as they are, anything else as JSON. */
export function textOf(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** ms shows a duration in milliseconds for people. */
export function ms(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return "-";
  return n < 1000 ? `${Math.round(n)}ms` : `${(n / 1000).toFixed(2)}s`;
}

/** table lays out rows in columns padded to their widest cell. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : (c ?? "").padEnd(widths[i]!))).join("  ");
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}
