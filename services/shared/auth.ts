import { createHmac, timingSafeEqual } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { shared } from "./queue.js";

/** Header names every service reads to tell who is calling. */
export const headers = {
  authorization: "authorization",
  apiKey: "x-api-key",
  serviceToken: "x-shaker-service-token",
  account: "x-shaker-account",
  /** liveRun names the run whose token a call carries, sent with the service credential by the Executor that runs it (see vouchFor). */
  liveRun: "x-shaker-live-run",
} as const;

/** RunClaims are what a run token lets a workflow's child process do. */
export interface RunClaims {
  /** account is the run's account id. */
  account: string;
  /** workflow is the workflow's reference. */
  workflow: string;
  /** version is the resolved version number. */
  version: string;
  /** versionId is the version's id, for accessories. */
  versionId: string;
  /** run is the run id. */
  run: string;
  /** session is the run's session id. */
  session: string;
  /** datastores are the stores the workflow is bound to. */
  datastores: { name: string; write: boolean }[];
  /** depth is the run's nesting depth. */
  depth: number;
  /** exp is the expiry, in milliseconds since the epoch. */
  exp: number;
  /** executor is the executor that runs the run (its cluster id), which answers whether it is live. */
  executor?: string;
}

/** KeyOwner is what an API key resolves to. */
export interface KeyOwner {
  accountId: string;
  admin: boolean;
  keyId: string;
}

/** Identity is the authenticated caller of an RPC. */
export type Identity =
  | { kind: "service"; accountId: string }
  | ({ kind: "key" } & KeyOwner)
  | { kind: "run"; accountId: string; claims: RunClaims };

const runTokenPrefix = "srt.";

/** Options of createAuth. */
export interface AuthOptions {
  /** serviceSecret signs run tokens and authenticates service-to-service calls. */
  serviceSecret: string;
  /** authenticateKey resolves an API key, or undefined when it is unknown or revoked. */
  authenticateKey: (apiKey: string) => Promise<KeyOwner | undefined>;
  /** keyCacheMs caches key look-ups; a revoked key stops working within this time. Default 2000. */
  keyCacheMs?: number;
  /**
   * runIsLive says whether a run is still in flight: a run token is refused once its run has ended,
   * not only at its expiry (a token printed or returned by a workflow is of no use afterwards).
   * The Executor that owns the run answers it (see runLiveness); without it tokens live until they expire.
   */
  runIsLive?: (runId: string, executor?: string) => boolean | Promise<boolean>;
}

/** Auth identifies callers from request headers and mints run tokens. */
export interface Auth {
  /** identify returns the caller or throws Unauthenticated. */
  identify(header: Headers): Promise<Identity>;
  /** mintRunToken signs claims into a token for a child process. */
  mintRunToken(claims: RunClaims): string;
  /** verifyRunToken returns the claims of a valid, unexpired token, or undefined. */
  verifyRunToken(token: string): RunClaims | undefined;
  /** serviceHeaders are the headers of an internal call made on behalf of an account. */
  serviceHeaders(accountId: string): Record<string, string>;
  /**
   * vouchFor are the headers an Executor adds to a call it passes on for one of its runs, having
   * just found the run live: with them, the service that answers takes the run's token without
   * asking the Executor again (a call made from a run's socket would otherwise cost one more round
   * trip between the processes). Sent with the run's own token, never instead of it.
   */
  vouchFor(claims: RunClaims): Record<string, string>;
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** bearerToken extracts the caller's credential from Authorization: Bearer or X-Api-Key. */
export function bearerToken(header: Headers): string | undefined {
  const authorization = header.get(headers.authorization);
  if (authorization) {
    const match = /^Bearer\s+(.+)$/i.exec(authorization.trim());
    if (match) return match[1].trim();
  }
  const apiKey = header.get(headers.apiKey);
  return apiKey ? apiKey.trim() : undefined;
}

/** createAuth builds the authenticator every service uses. */
export function createAuth(options: AuthOptions): Auth {
  const cacheMs = options.keyCacheMs ?? 2000;
  const keyCache = new Map<string, { owner: KeyOwner; until: number }>();

  function sign(payload: string): string {
    return createHmac("sha256", options.serviceSecret).update(payload).digest("base64url");
  }

  function verifyRunToken(token: string): RunClaims | undefined {
    if (!token.startsWith(runTokenPrefix)) return undefined;
    // Exactly payload.signature: trailing parts would ride along on a valid signature.
    const parts = token.slice(runTokenPrefix.length).split(".");
    if (parts.length !== 2) return undefined;
    const [payload, signature] = parts;
    if (!payload || !signature || !safeEqual(sign(payload), signature)) return undefined;
    try {
      const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as RunClaims;
      return typeof claims.exp === "number" && claims.exp > Date.now() ? claims : undefined;
    } catch {
      return undefined;
    }
  }

  // The requests that find a key's cached owner gone together share one look-up.
  const lookUp = shared<KeyOwner | undefined>();
  async function ownerOf(apiKey: string): Promise<KeyOwner | undefined> {
    const now = Date.now();
    const cached = keyCache.get(apiKey);
    if (cached && cached.until > now) return cached.owner;
    return lookUp(apiKey, async () => {
      const owner = await options.authenticateKey(apiKey);
      if (owner && cacheMs > 0) {
        if (keyCache.size > 10_000) keyCache.clear();
        keyCache.set(apiKey, { owner, until: now + cacheMs });
      }
      return owner;
    });
  }

  // One request is identified once, however many of its interceptors and its handler ask: the
  // answer is kept with the request's headers while their credentials stay the same.
  const identified = new WeakMap<Headers, { credential: string; identity: Promise<Identity> }>();

  async function identifyAnew(header: Headers): Promise<Identity> {
    const serviceToken = header.get(headers.serviceToken);
    if (serviceToken !== null) {
      if (!safeEqual(serviceToken, options.serviceSecret)) {
        throw new ConnectError("invalid service credential", Code.Unauthenticated);
      }
      const vouched = header.get(headers.liveRun);
      if (vouched === null) return { kind: "service", accountId: header.get(headers.account) ?? "" };
      // The run's Executor checked that it is live as it passed the call on: its token still has to be valid, and its own.
      const claims = verifyRunToken(bearerToken(header) ?? "");
      if (!claims || claims.run !== vouched) throw new ConnectError("invalid or expired run token", Code.Unauthenticated);
      return { kind: "run", accountId: claims.account, claims };
    }
    const token = bearerToken(header);
    if (!token) {
      throw new ConnectError("missing API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'", Code.Unauthenticated);
    }
    if (token.startsWith(runTokenPrefix)) {
      const claims = verifyRunToken(token);
      if (!claims) throw new ConnectError("invalid or expired run token", Code.Unauthenticated);
      if (options.runIsLive && !(await options.runIsLive(claims.run, claims.executor))) {
        throw new ConnectError("the run this token was given to has ended", Code.Unauthenticated);
      }
      return { kind: "run", accountId: claims.account, claims };
    }
    const owner = await ownerOf(token);
    if (!owner) throw new ConnectError("invalid API key", Code.Unauthenticated);
    return { kind: "key", ...owner };
  }

  return {
    identify(header) {
      const credential = `${header.get(headers.serviceToken)}\n${header.get(headers.account)}\n${header.get(headers.liveRun)}\n${header.get("authorization")}\n${header.get(headers.apiKey)}`;
      const known = identified.get(header);
      if (known && known.credential === credential) return known.identity;
      const identity = identifyAnew(header);
      identified.set(header, { credential, identity });
      return identity;
    },
    mintRunToken(claims) {
      const payload = Buffer.from(JSON.stringify(claims)).toString("base64url");
      return `${runTokenPrefix}${payload}.${sign(payload)}`;
    },
    verifyRunToken,
    serviceHeaders(accountId) {
      return { [headers.serviceToken]: options.serviceSecret, [headers.account]: accountId };
    },
    vouchFor(claims) {
      return { [headers.serviceToken]: options.serviceSecret, [headers.liveRun]: claims.run };
    },
  };
}

/** requireAdmin throws PermissionDenied unless the caller is a service or holds an admin account's key. */
export function requireAdmin(identity: Identity, what: string): void {
  if (identity.kind === "service") return;
  if (identity.kind === "key" && identity.admin) return;
  throw new ConnectError(`only an admin account's key may ${what}`, Code.PermissionDenied);
}

/** requireAccount returns the account an identity acts for, or throws when it acts for none. */
export function requireAccount(identity: Identity): string {
  if (!identity.accountId) throw new ConnectError("the call names no account", Code.Unauthenticated);
  return identity.accountId;
}

/**
 * runLiveness answers "is this run in flight?" by asking its Executor (`check`, an RPC), keeping each
 * answer for `cacheMs`: a run's token is refused at most that long after its run ended (and a run
 * resumed after a crash is served again at most that long after it resumed).
 */
export function runLiveness(
  check: (runId: string, executor?: string) => Promise<boolean>,
  cacheMs = 1000,
): (runId: string, executor?: string) => Promise<boolean> {
  const answers = new Map<string, { live: boolean; until: number }>();
  return async (runId, executor) => {
    const now = Date.now();
    const known = answers.get(runId);
    if (known && known.until > now) return known.live;
    const live = await check(runId, executor);
    if (answers.size >= 10_000) for (const [id, a] of answers) if (a.until <= now) answers.delete(id);
    if (answers.size < 10_000) answers.set(runId, { live, until: now + cacheMs });
    return live;
  };
}
