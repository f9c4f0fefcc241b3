/**
 * Outbound HTTP on behalf of workflow runs. A run has no network of its own: ctx.http calls the
 * Executor's Fetch RPC, and the request leaves from here. Every connection is checked on the
 * address it actually connects to (a custom `lookup` runs at connect time, so a name that resolves
 * to a public address when asked and to an internal one a moment later gains nothing), and every
 * redirect hop is checked again. Internal destinations (loopback, link-local, private, CGNAT,
 * multicast, reserved, and their IPv4-mapped, NAT64 and 6to4 forms) are refused unless the operator
 * allows them in SHAKER_HTTP_ALLOW.
 */
import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import http, { type IncomingMessage } from "node:http";
import https from "node:https";
import { isIP } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";

/** defaultTimeoutMs bounds a request whose call gives no timeout. */
export const defaultTimeoutMs = 30_000;
/** maxRedirects is how many redirects one request follows. */
export const maxRedirects = 5;
/** defaultMaxResponseBytes caps a response body; a larger one fails the request. */
export const defaultMaxResponseBytes = 32 * 1024 * 1024;
/** defaultMaxRequestBytes caps a request body (the RPC itself is capped by the server's max body size too). */
export const defaultMaxRequestBytes = 10 * 1024 * 1024;

/** The variable an operator lists allowed destinations in, named in every refusal. */
const allowVariable = "SHAKER_HTTP_ALLOW";

// --- addresses ---------------------------------------------------------------------------------

/** Address is an IP address as a number; IPv4-mapped IPv6 addresses are read as the IPv4 address they map. */
interface Address {
  family: 4 | 6;
  value: bigint;
}

function parseV4(text: string): bigint | undefined {
  if (isIP(text) !== 4) return undefined;
  return text.split(".").reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
}

function parseV6(text: string): bigint | undefined {
  if (isIP(text) !== 6) return undefined;
  let s = text;
  // A trailing dotted quad is two groups.
  const lastColon = s.lastIndexOf(":");
  const tail = s.slice(lastColon + 1);
  if (tail.includes(".")) {
    const v4 = parseV4(tail);
    if (v4 === undefined) return undefined;
    s = `${s.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head, rest] = s.split("::") as [string, string | undefined];
  const headGroups = head ? head.split(":") : [];
  const restGroups = rest === undefined ? [] : rest ? rest.split(":") : [];
  const zeros = rest === undefined ? 0 : 8 - headGroups.length - restGroups.length;
  const groups = [...headGroups, ...Array<string>(zeros).fill("0"), ...restGroups];
  if (groups.length !== 8) return undefined;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/** parseAddress reads an IPv4 or IPv6 address (brackets and a zone allowed), or undefined. */
function parseAddress(text: string): Address | undefined {
  let s = text.trim();
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  const v4 = parseV4(s);
  if (v4 !== undefined) return { family: 4, value: v4 };
  const v6 = parseV6(s);
  if (v6 === undefined) return undefined;
  if (v6 >> 32n === 0xffffn) return { family: 4, value: v6 & 0xffffffffn };
  return { family: 6, value: v6 };
}

/** Range is a CIDR block. */
interface Range {
  family: 4 | 6;
  base: bigint;
  bits: number;
}

function inRange(a: Address, r: Range): boolean {
  if (a.family !== r.family) return false;
  const width = a.family === 4 ? 32 : 128;
  const shift = BigInt(width - r.bits);
  return a.value >> shift === r.base >> shift;
}

function range(cidr: string): Range {
  const [addr, bits] = cidr.split("/");
  const a = parseAddress(addr)!;
  return { family: a.family, base: a.value, bits: Number(bits) };
}

const forbiddenV4: [Range, string][] = [
  [range("0.0.0.0/8"), "'this network' (0.0.0.0/8)"],
  [range("10.0.0.0/8"), "private"],
  [range("100.64.0.0/10"), "shared (CGNAT)"],
  [range("127.0.0.0/8"), "loopback"],
  [range("169.254.0.0/16"), "link-local"],
  [range("172.16.0.0/12"), "private"],
  [range("192.0.0.0/24"), "IETF-reserved"],
  [range("192.168.0.0/16"), "private"],
  [range("198.18.0.0/15"), "benchmarking"],
  [range("224.0.0.0/4"), "multicast"],
  [range("240.0.0.0/4"), "reserved (or broadcast)"],
];

const forbiddenV6: [Range, string][] = [
  [range("::/128"), "unspecified"],
  [range("::1/128"), "loopback"],
  [range("fe80::/10"), "link-local"],
  [range("fec0::/10"), "site-local"],
  [range("fc00::/7"), "unique local (private)"],
  [range("ff00::/8"), "multicast"],
];

/** IPv6 ranges that carry an IPv4 address: the range, where the IPv4 address sits (bits from the right), and what it is. */
const embeddingV4: [Range, number, string][] = [
  [range("::/96"), 0, "IPv4-compatible"],
  [range("64:ff9b::/96"), 0, "NAT64"],
  [range("64:ff9b:1::/48"), 0, "NAT64"],
  [range("2002::/16"), 80, "6to4"],
];

function v4Text(value: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join(".");
}

/**
 * internalReason says why workflows may not reach an address ("loopback", "private", ...), or
 * undefined for a public one. An address that is not an IP address at all is refused too.
 */
export function internalReason(address: string): string | undefined {
  const a = parseAddress(address);
  if (!a) return "unparseable";
  const mapped = a.family === 4 && isIP(address.replace(/^\[|\]$/g, "").replace(/%.*$/, "")) === 6;
  if (a.family === 4) {
    const hit = forbiddenV4.find(([r]) => inRange(a, r));
    if (!hit) return undefined;
    return mapped ? `IPv4-mapped ${v4Text(a.value)}, ${hit[1]}` : hit[1];
  }
  const hit = forbiddenV6.find(([r]) => inRange(a, r));
  if (hit) return hit[1];
  for (const [r, shift, what] of embeddingV4) {
    if (!inRange(a, r)) continue;
    const v4: Address = { family: 4, value: (a.value >> BigInt(shift)) & 0xffffffffn };
    const inner = forbiddenV4.find(([f]) => inRange(v4, f));
    if (inner) return `${what} form of ${v4Text(v4.value)}, ${inner[1]}`;
  }
  return undefined;
}

// --- the operator's allow-list -----------------------------------------------------------------

type AllowEntry = { kind: "net"; range: Range; port?: number } | { kind: "name"; name: string; suffix: boolean; port?: number };

/** AllowList is what the operator lets workflows reach besides public addresses. */
export interface AllowList {
  /** entries are the list as given. */
  readonly entries: readonly string[];
  /** allowsName is true when a URL's host name (and port) is allowed whatever it resolves to. */
  allowsName(hostname: string, port: number): boolean;
  /** allowsAddress is true when connecting to this address and port is allowed although it is internal. */
  allowsAddress(address: string, port: number): boolean;
}

function portOf(text: string, entry: string): number {
  const port = Number(text);
  if (!/^\d{1,5}$/.test(text) || port < 1 || port > 65535) throw new Error(`${allowVariable}: bad port in ${JSON.stringify(entry)}`);
  return port;
}

function normalName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

/**
 * parseAllowList reads the operator's allow-list. Each entry is one of:
 *   - a CIDR range, `10.0.0.0/8` or `fd00::/8`: any port of any address in it;
 *   - an IP address, `10.1.2.3` or `::1`: any port of that address; `10.1.2.3:8080` or
 *     `[::1]:8080`: that port only;
 *   - a host name, `internal.example`, or `*.internal.example` for its subdomains (not itself):
 *     a URL naming that host may reach whatever it resolves to, on any port; with `:port`, only
 *     on that port (the URL's port, or 80/443 by its scheme).
 * Blank entries are skipped; a malformed one throws, naming it.
 */
export function parseAllowList(entries: readonly string[]): AllowList {
  const parsed: AllowEntry[] = [];
  const kept: string[] = [];
  for (const raw of entries) {
    const entry = raw.trim();
    if (!entry) continue;
    kept.push(entry);
    if (entry.includes("/")) {
      const [addr, bits, extra] = entry.split("/");
      const a = parseAddress(addr);
      const n = Number(bits);
      if (!a || extra !== undefined || !/^\d{1,3}$/.test(bits) || n > (a.family === 4 ? 32 : 128)) {
        throw new Error(`${allowVariable}: ${JSON.stringify(entry)} is not a CIDR range such as 10.0.0.0/8`);
      }
      // An IPv4-mapped range counts as the IPv4 range it maps.
      const isMappedV6 = a.family === 4 && isIP(addr.replace(/^\[|\]$/g, "")) === 6;
      parsed.push({ kind: "net", range: { family: a.family, base: a.value, bits: isMappedV6 ? Math.max(0, n - 96) : n } });
      continue;
    }
    const bare = parseAddress(entry);
    if (bare) {
      parsed.push({ kind: "net", range: { family: bare.family, base: bare.value, bits: bare.family === 4 ? 32 : 128 } });
      continue;
    }
    const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(entry);
    const withPort = bracketed ?? /^([^:]+):(\d+)$/.exec(entry);
    const host = withPort ? withPort[1] : entry;
    const port = withPort ? portOf(withPort[2], entry) : undefined;
    const addr = parseAddress(host);
    if (addr) {
      parsed.push({ kind: "net", range: { family: addr.family, base: addr.value, bits: addr.family === 4 ? 32 : 128 }, port });
      continue;
    }
    const suffix = host.startsWith("*.");
    const name = normalName(suffix ? host.slice(2) : host);
    if (bracketed || !/^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/i.test(name)) {
      throw new Error(
        `${allowVariable}: ${JSON.stringify(entry)} is neither a CIDR range, an IP address nor a host name (with an optional :port)`,
      );
    }
    parsed.push({ kind: "name", name, suffix, port });
  }
  return {
    entries: kept,
    allowsName(hostname, port) {
      const name = normalName(hostname);
      return parsed.some(
        (e) => e.kind === "name" && (e.port === undefined || e.port === port) && (e.suffix ? name.endsWith(`.${e.name}`) : name === e.name),
      );
    },
    allowsAddress(address, port) {
      const a = parseAddress(address);
      if (!a) return false;
      return parsed.some((e) => e.kind === "net" && (e.port === undefined || e.port === port) && inRange(a, e.range));
    },
  };
}

// --- requests ----------------------------------------------------------------------------------

/** Resolver resolves a host name to all its addresses, as dns.lookup with `all: true` does. */
export type Resolver = (
  hostname: string,
  options: { all: true; family?: number; hints?: number },
  callback: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void,
) => void;

/** EgressOptions are the operator's rules for outbound requests. */
export interface EgressOptions {
  allow: AllowList;
  maxRequestBytes?: number;
  maxResponseBytes?: number;
  /** resolve replaces dns.lookup (tests). */
  resolve?: Resolver;
}

/** FetchInput is one outbound request. */
export interface FetchInput {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: Uint8Array;
  /** timeoutMs bounds the whole exchange, redirects included. */
  timeoutMs: number;
  signal?: AbortSignal;
}

/** FetchOutput is the last response, after redirects. */
export interface FetchOutput {
  status: number;
  /** headers are named as the server sent them; repeated ones joined by ", ". */
  headers: Record<string, string>;
  body: Uint8Array;
  url: string;
}

/** Hop is one request that went (or was refused) on the way: what a run record keeps of it. */
export interface Hop {
  method: string;
  /** host is the URL's host and port, never its user-info. */
  host: string;
  /** status is 0 when no response came. */
  status: number;
  durationMs: number;
  error: string;
  /** time is when it started, in milliseconds since the epoch. */
  time: number;
}

/** Headers a caller may not set: the connection is the Executor's to manage. */
const hopByHop = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "content-length",
  "expect",
  "proxy-connection",
]);
/** Headers that do not follow a redirect to another origin. */
const credentialHeaders = new Set(["authorization", "cookie", "proxy-authorization"]);
const tokenPattern = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

function failure(message: string, code: Code): ConnectError {
  return new ConnectError(message, code);
}

function describeTarget(hostname: string, port: number): string {
  return `${isIP(hostname) === 6 ? `[${hostname}]` : hostname}:${port}`;
}

function refusal(hostname: string, port: number, address: string, reason: string): ConnectError {
  const target = describeTarget(hostname, port);
  const literal = isIP(hostname) !== 0;
  const where = literal ? `${target} (${reason} address)` : `${target}: it resolves to ${address} (${reason} address)`;
  const example = literal ? address : `${hostname}:${port}`;
  return failure(
    `refused to connect to ${where}; workflows may reach only public addresses unless the operator allows the destination in ${allowVariable} (comma-separated CIDR ranges, IP addresses or host[:port] names, e.g. ${allowVariable}=${example})`,
    Code.PermissionDenied,
  );
}

function fromNodeError(e: unknown, target: string): ConnectError {
  if (e instanceof ConnectError) return e;
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case "ENOTFOUND":
    case "EAI_AGAIN":
    case "EAI_FAIL":
    case "EAI_NODATA":
    case "EAI_NONAME":
      return failure(`could not resolve ${target} (${err.code})`, Code.Unavailable);
    case "ERR_INVALID_HTTP_TOKEN":
    case "ERR_INVALID_CHAR":
    case "ERR_HTTP_INVALID_HEADER_VALUE":
    case "ERR_UNESCAPED_CHARACTERS":
      return failure(err.message, Code.InvalidArgument);
    default:
      return failure(
        `${err.message || String(e)}${err.code && !String(err.message).includes(err.code) ? ` (${err.code})` : ""}`,
        Code.Unavailable,
      );
  }
}

function joinHeaders(raw: string[]): Record<string, string> {
  const byName = new Map<string, [string, string]>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const key = raw[i].toLowerCase();
    const seen = byName.get(key);
    if (seen) seen[1] += `, ${raw[i + 1]}`;
    else byName.set(key, [raw[i], raw[i + 1]]);
  }
  return Object.fromEntries(byName.values());
}

interface HopResult {
  status: number;
  rawHeaders: string[];
  body: Uint8Array;
  location: string | undefined;
}

/**
 * egressFetch makes one outbound request, following redirects (each hop checked anew), and calls
 * onHop for every hop, refused ones included. It fails with a ConnectError: PermissionDenied for a
 * refused destination, InvalidArgument for a bad request, DeadlineExceeded, ResourceExhausted for a
 * body over the caps, Unavailable when no answer came, Canceled when the signal aborts.
 */
export async function egressFetch(input: FetchInput, options: EgressOptions, onHop: (hop: Hop) => void): Promise<FetchOutput> {
  const maxRequestBytes = options.maxRequestBytes ?? defaultMaxRequestBytes;
  const maxResponseBytes = options.maxResponseBytes ?? defaultMaxResponseBytes;
  let method = (input.method || "GET").toUpperCase();
  if (!tokenPattern.test(method)) throw failure(`${JSON.stringify(input.method)} is not an HTTP method`, Code.InvalidArgument);
  if (method === "CONNECT") throw failure("CONNECT is not supported", Code.InvalidArgument);
  let url: URL;
  try {
    url = new URL(input.url);
  } catch {
    throw failure("url must be an absolute http or https URL", Code.InvalidArgument);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw failure(`unsupported URL scheme ${JSON.stringify(url.protocol.slice(0, -1))}: use http or https`, Code.InvalidArgument);
  }
  if (input.body.length > maxRequestBytes) {
    throw failure(`the request body is ${input.body.length} bytes; at most ${maxRequestBytes} may be sent`, Code.ResourceExhausted);
  }
  // One value per header name, named as the caller named it.
  const headers = new Map<string, [string, string]>();
  for (const [name, value] of Object.entries(input.headers)) {
    if (!tokenPattern.test(name)) throw failure(`${JSON.stringify(name)} is not a header name`, Code.InvalidArgument);
    if (/[\r\n\0]/.test(value)) throw failure(`the value of header ${name} holds a line break or NUL`, Code.InvalidArgument);
    if (hopByHop.has(name.toLowerCase())) continue;
    headers.set(name.toLowerCase(), [name, value]);
  }
  if (!headers.has("user-agent")) headers.set("user-agent", ["User-Agent", "shaker-workflow"]);
  let body = input.body;
  const deadline = Date.now() + input.timeoutMs;

  for (let redirects = 0; ; redirects++) {
    const hopUrl = url;
    const started = Date.now();
    const record = (status: number, error: string) =>
      onHop({ method, host: hopUrl.host, status, durationMs: Math.max(Date.now() - started, 0.001), error, time: started });
    let result: HopResult;
    try {
      result = await oneHop(hopUrl, method, headers, body, deadline, input.signal, options, maxResponseBytes);
    } catch (e) {
      const err = e instanceof ConnectError ? e : fromNodeError(e, hopUrl.host);
      record(0, err.rawMessage);
      throw err;
    }
    record(result.status, "");
    if (result.location === undefined) {
      return {
        status: result.status,
        headers: joinHeaders(result.rawHeaders),
        body: result.body,
        url: redirects === 0 ? input.url : url.href,
      };
    }
    if (redirects === maxRedirects) {
      throw failure(`stopped after ${maxRedirects} redirects (the last from ${hopUrl.host})`, Code.FailedPrecondition);
    }
    let next: URL;
    try {
      next = new URL(result.location, hopUrl);
    } catch {
      throw failure(`${hopUrl.host} redirected to an invalid URL`, Code.Unavailable);
    }
    if (next.protocol !== "http:" && next.protocol !== "https:") {
      throw failure(
        `${hopUrl.host} redirected to an unsupported URL scheme ${JSON.stringify(next.protocol.slice(0, -1))}`,
        Code.FailedPrecondition,
      );
    }
    // As browsers do: 303 turns into GET, and so do 301 and 302 after a POST; 307 and 308 repeat the request.
    if ((result.status === 303 && method !== "HEAD") || ((result.status === 301 || result.status === 302) && method === "POST")) {
      method = "GET";
      body = new Uint8Array(0);
      for (const name of ["content-type", "content-encoding", "content-language", "content-location"]) headers.delete(name);
    }
    if (next.origin !== hopUrl.origin) for (const name of credentialHeaders) headers.delete(name);
    next.hash = "";
    url = next;
  }
}

function oneHop(
  url: URL,
  method: string,
  headers: Map<string, [string, string]>,
  body: Uint8Array,
  deadline: number,
  signal: AbortSignal | undefined,
  options: EgressOptions,
  maxResponseBytes: number,
): Promise<HopResult> {
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port) || (url.protocol === "https:" ? 443 : 80);
  const target = describeTarget(hostname, port);
  const allowedByName = options.allow.allowsName(hostname, port);
  const internal = (address: string) => {
    const reason = internalReason(address);
    return reason !== undefined && !options.allow.allowsAddress(address, port) ? reason : undefined;
  };
  if (isIP(hostname) && !allowedByName) {
    const reason = internal(hostname);
    if (reason) return Promise.reject(refusal(hostname, port, hostname, reason));
  }
  const remaining = deadline - Date.now();
  if (remaining <= 0) return Promise.reject(failure(`timed out before ${target} could be asked`, Code.DeadlineExceeded));
  if (signal?.aborted) return Promise.reject(failure("the call was cancelled", Code.Canceled));

  const resolve: Resolver = options.resolve ?? ((h, o, cb) => dnsLookup(h, o, cb));
  let refused: ConnectError | undefined;
  // Called by the socket at connect time, for the address it will connect to: the check cannot be
  // raced by a name that resolves differently the next time.
  const lookup = (host: string, opts: { all?: boolean; family?: number; hints?: number }, callback: (...args: unknown[]) => void) => {
    resolve(host, { all: true, family: opts.family, hints: opts.hints }, (err, addresses) => {
      if (err) return callback(err);
      if (!addresses || addresses.length === 0)
        return callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: "ENOTFOUND" }));
      const usable = allowedByName ? addresses : addresses.filter((a) => internal(a.address) === undefined);
      if (usable.length === 0) {
        refused = refusal(hostname, port, addresses[0].address, internal(addresses[0].address)!);
        return callback(refused);
      }
      if (opts.all) callback(null, usable);
      else callback(null, usable[0].address, usable[0].family);
    });
  };

  const sent: Record<string, string> = {};
  for (const [name, value] of headers.values()) sent[name] = value;
  if ((url.username || url.password) && !headers.has("authorization")) {
    const user = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
    sent.Authorization = `Basic ${Buffer.from(user).toString("base64")}`;
  }
  if (body.length > 0 || !["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"].includes(method)) sent["Content-Length"] = String(body.length);

  return new Promise<HopResult>((resolvePromise, rejectPromise) => {
    let done = false;
    let req: http.ClientRequest | undefined;
    const finish = (err: unknown, result?: HopResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (err !== undefined) {
        req?.destroy();
        rejectPromise(refused ?? fromNodeError(err, target));
      } else resolvePromise(result!);
    };
    const onAbort = () => finish(failure("the call was cancelled", Code.Canceled));
    const timer = setTimeout(() => finish(failure(`timed out waiting for ${target}`, Code.DeadlineExceeded)), remaining);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      req = (url.protocol === "https:" ? https : http).request({
        protocol: url.protocol,
        hostname,
        port,
        path: `${url.pathname}${url.search}`,
        method,
        headers: sent,
        lookup: lookup as never,
        agent: false,
      });
    } catch (e) {
      finish(e);
      return;
    }
    const request = req;
    request.on("error", (e) => finish(e));
    request.on("response", (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      const location = res.headers.location;
      if ([301, 302, 303, 307, 308].includes(status) && typeof location === "string" && location !== "") {
        res.resume();
        finish(undefined, { status, rawHeaders: res.rawHeaders, body: new Uint8Array(0), location });
        request.destroy();
        return;
      }
      const tooLarge = () =>
        failure(
          `the response of ${target} is larger than ${maxResponseBytes} bytes, the most a workflow may receive`,
          Code.ResourceExhausted,
        );
      const declared = Number(res.headers["content-length"]);
      if (Number.isFinite(declared) && declared > maxResponseBytes) return finish(tooLarge());
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxResponseBytes) return finish(tooLarge());
        chunks.push(chunk);
      });
      res.on("error", (e) => finish(e));
      res.on("end", () => finish(undefined, { status, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks), location: undefined }));
      res.on("close", () => finish(failure(`${target} closed the connection before the response ended`, Code.Unavailable)));
    });
    request.end(body.length > 0 ? Buffer.from(body.buffer, body.byteOffset, body.byteLength) : undefined);
  });
}
