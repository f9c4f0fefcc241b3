import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync } from "node:fs";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { type ApiKey, RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { createRegistryService } from "../services/registry/service.js";
import { createRegistryStore } from "../services/registry/store.js";
import { headers as authHeaders } from "../services/shared/auth.js";
import { type Config, databaseLocation, loadConfig } from "../services/shared/config.js";
import { keysUsage, UsageError } from "./help.js";

export { keysUsage, UsageError };

interface Parsed {
  positional: string[];
  account?: string;
  admin: boolean;
  json: boolean;
}

function parseArgs(args: string[]): Parsed {
  const out: Parsed = { positional: [], admin: false, json: false };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--admin") out.admin = true;
    else if (a === "--json") out.json = true;
    else if (a === "--account" || a.startsWith("--account=")) {
      const v = a.includes("=") ? a.slice(a.indexOf("=") + 1) : args[++i];
      if (!v) throw new UsageError("--account needs a NAME");
      out.account = v;
    } else if (a.startsWith("-")) throw new UsageError(`unknown option '${a}'`);
    else out.positional.push(a);
  }
  return out;
}

/** Registry is the Registry client the commands use, and how to let go of it. */
interface RegistryHandle {
  client: Client<typeof RegistryService>;
  headers: Record<string, string>;
  where: string;
  close(): Promise<void>;
}

/** remoteRegistry talks to a running server over the Connect protocol with an admin key. */
function remoteRegistry(url: string, apiKey: string | undefined): RegistryHandle {
  if (!apiKey) throw new Error("SHAKER_URL is set but SHAKER_API_KEY is not: set it to an admin account's key");
  let baseUrl: string;
  try {
    baseUrl = new URL(url).toString().replace(/\/$/, "");
  } catch {
    throw new Error(`SHAKER_URL is not a URL: ${JSON.stringify(url)}`);
  }
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1" });
  return {
    client: createClient(RegistryService, transport),
    headers: { authorization: `Bearer ${apiKey}` },
    where: baseUrl,
    close: async () => {},
  };
}

/**
 * localRegistry serves the Registry in process over its database (SHAKER_DATABASE_URL, else the data
 * directory's registry.db), so both modes run the same handlers (the same checks); the calls carry
 * a one-off service credential.
 */
async function localRegistry(config: Config, create: boolean): Promise<RegistryHandle> {
  const location = databaseLocation(config, "registry");
  const where = config.databaseUrl ? "the database of SHAKER_DATABASE_URL" : config.dataDir;
  if (!config.databaseUrl && !existsSync(location)) {
    if (!create) {
      throw new Error(`no Shaker data in ${config.dataDir} (no registry.db): set SHAKER_DATA_DIR, or SHAKER_URL for a running server`);
    }
    mkdirSync(config.dataDir, { recursive: true });
  }
  const store = await createRegistryStore(location, { poolSize: 1 });
  const serviceSecret = randomBytes(32).toString("base64url");
  const registry = createRegistryService({
    store,
    serviceSecret,
    python: config.python,
    defaultTimeoutSeconds: config.defaultTimeoutSeconds,
    maxTimeoutSeconds: config.maxTimeoutSeconds,
  });
  const transport = createRouterTransport((router) => router.service(RegistryService, registry.impl));
  return {
    client: createClient(RegistryService, transport),
    headers: { [authHeaders.serviceToken]: serviceSecret },
    where,
    async close() {
      registry.close();
      await store.close();
    },
  };
}

function date(k: ApiKey, field: "createdAt" | "revokedAt"): string {
  const ts = k[field];
  return ts ? timestampDate(ts).toISOString() : "";
}

function keyJson(k: ApiKey): Record<string, unknown> {
  return { id: k.id, prefix: k.prefix, account: k.accountName, created_at: date(k, "createdAt"), revoked_at: date(k, "revokedAt") || null };
}

function table(keys: ApiKey[]): string {
  const rows = [["ID", "PREFIX", "ACCOUNT", "CREATED", "STATUS"]];
  for (const k of keys)
    rows.push([k.id, `${k.prefix}…`, k.accountName, date(k, "createdAt"), k.revokedAt ? `revoked ${date(k, "revokedAt")}` : "active"]);
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i]))
          .join("  ")
          .trimEnd(),
      )
      .join("\n") + "\n"
  );
}

/** runKeys runs `shaker keys ...`; it writes to out and throws Error (exit 1) or UsageError (exit 2). */
export async function runKeys(args: string[], env: NodeJS.ProcessEnv, out: (s: string) => void): Promise<void> {
  const [command, ...rest] = args;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    out(keysUsage);
    return;
  }
  if (!["create", "list", "revoke"].includes(command)) throw new UsageError(`unknown keys command '${command}'`);
  const opts = parseArgs(rest);
  if (command === "create" && !opts.account) throw new UsageError("keys create needs --account NAME");
  if (command === "revoke" && opts.positional.length !== 1) throw new UsageError("keys revoke needs exactly one key ID");
  if (command !== "revoke" && opts.positional.length > 0) throw new UsageError(`unexpected argument '${opts.positional[0]}'`);
  if (command !== "create" && opts.admin) throw new UsageError("--admin applies to keys create only");

  const url = env.SHAKER_URL?.trim();
  const registry = url
    ? remoteRegistry(url, env.SHAKER_API_KEY?.trim() || undefined)
    : await localRegistry(loadConfig(env), command === "create");
  const callOptions = { headers: registry.headers };
  try {
    switch (command) {
      case "create": {
        const resp = await registry.client.createApiKey({ accountName: opts.account!, admin: opts.admin }, callOptions);
        const k = resp.key!;
        if (opts.json) out(JSON.stringify({ api_key: resp.apiKey, ...keyJson(k) }) + "\n");
        else {
          out(`Created key ${k.id} for account '${k.accountName}'. It is shown only this once; keep it:\n\n  ${resp.apiKey}\n\n`);
        }
        return;
      }
      case "list": {
        const resp = await registry.client.listApiKeys(opts.account ? { accountName: opts.account } : { allAccounts: true }, callOptions);
        out(opts.json ? JSON.stringify(resp.keys.map(keyJson)) + "\n" : table(resp.keys));
        return;
      }
      case "revoke": {
        const resp = await registry.client.revokeApiKey({ keyId: opts.positional[0] }, callOptions);
        const k = resp.key!;
        out(opts.json ? JSON.stringify(keyJson(k)) + "\n" : `Revoked key ${k.id} (${k.prefix}…) of account '${k.accountName}'.\n`);
        return;
      }
    }
  } catch (e) {
    throw new Error(explain(e, registry.where));
  } finally {
    await registry.close();
  }
}

/** explain turns an RPC failure into one line a user can act on. */
function explain(e: unknown, where: string): string {
  const ce = ConnectError.from(e);
  switch (ce.code) {
    case Code.Unauthenticated:
      return `${where} refused SHAKER_API_KEY: ${ce.rawMessage}`;
    case Code.PermissionDenied:
      return `${ce.rawMessage} (SHAKER_API_KEY must belong to an admin account)`;
    case Code.Unavailable:
    case Code.Unknown:
      return `cannot reach ${where}: ${ce.rawMessage}`;
    default:
      return ce.rawMessage.split("\n")[0];
  }
}
