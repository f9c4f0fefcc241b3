// Providers, models and routes of the ModelProxy, and the upstream calls with retries, per-attempt
// timeouts and fallbacks. Every upstream is reached through the small client of upstream.ts.
import { readFileSync } from "node:fs";
import type { Config } from "../shared/config.js";
import { LOCAL_MODEL } from "./local.js";
import type { AttemptRecord } from "./schema.js";
import { UpstreamClient, UpstreamConnectionError, UpstreamStatusError } from "./upstream.js";

/** Provider is one configured upstream, or the built-in local model. */
export interface Provider {
  name: string;
  type: "openai" | "local";
  baseUrl: string;
  apiKey: string;
  /** timeoutMs bounds one attempt (for streams: the wait for each chunk). */
  timeoutMs: number;
  /** maxRetries is how many times a 429, 5xx, timeout or lost connection is retried on the same model. */
  maxRetries: number;
  /** client is the HTTP client of an upstream; undefined for local. */
  client: UpstreamClient | undefined;
}

/** ModelEntry is one configured model name. */
export interface ModelEntry {
  name: string;
  provider: string;
  /** upstreamModel is the name sent upstream; the entry's name by default. */
  upstreamModel: string;
  kind: "chat" | "embedding";
  /** fallbacks are model names tried in order when this one fails. */
  fallbacks: string[];
}

/** Target is one model on one provider to try. */
export interface Target {
  provider: Provider;
  /** model is the name sent upstream. */
  model: string;
}

/** ProxyConfig is the routing table of the ModelProxy. */
export interface ProxyConfig {
  providers: Map<string, Provider>;
  models: Map<string, ModelEntry>;
  intents: Map<string, string[]>;
  applications: Map<string, string[]>;
  /** defaultProvider serves model names no entry configures. */
  defaultProvider: Provider;
  defaultModel: string;
  defaultEmbeddingModel: string;
  backoffMs: number;
}

const localNames = new Set([LOCAL_MODEL, "local"]);

function fail(file: string, path: string, what: string): never {
  throw new Error(`models config ${file}: '${path}' ${what}`);
}

function str(file: string, obj: Record<string, unknown>, key: string, path: string): string | undefined {
  const v = obj[key];
  if (v === undefined || v === null || v === "") return undefined;
  if (typeof v !== "string") fail(file, `${path}${key}`, "must be a string");
  return v;
}

function num(file: string, obj: Record<string, unknown>, key: string, path: string): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) fail(file, `${path}${key}`, "must be a non-negative number");
  return v;
}

function names(file: string, v: unknown, path: string): string[] {
  if (typeof v === "string") return [v];
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) fail(file, path, "must be a model name or a list of model names");
  return v as string[];
}

function objectAt(file: string, v: unknown, path: string): Record<string, unknown> {
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v)) fail(file, path, "must be a JSON object");
  return v as Record<string, unknown>;
}

function httpUrl(text: string): boolean {
  try {
    const { protocol } = new URL(text);
    return protocol === "http:" || protocol === "https:";
  } catch {
    return false;
  }
}

function makeProvider(p: Omit<Provider, "client">): Provider {
  // Retries and timeouts are the proxy's own (the client makes one request per attempt), so that each attempt is recorded.
  return { ...p, client: p.type === "openai" ? new UpstreamClient(p.baseUrl, p.apiKey) : undefined };
}

/**
 * loadProxyConfig builds the routing table from OPENAI_API_KEY / OPENAI_BASE_URL and the JSON file
 * named by SHAKER_MODELS_CONFIG. With neither, the local provider serves every call. Throws a clear
 * error naming the file and field when the file is malformed.
 *
 * The file: `{ providers: {name: {base_url, api_key | api_key_env, type?: "openai"|"local",
 * timeout_ms?, max_retries?}}, models: {name: {provider, model?, kind?, fallbacks?}},
 * routes: {intents: {intent: [model, ...]}, applications: {app: [model, ...]}},
 * default_provider?, default_model?, default_embedding_model?, timeout_ms?, max_retries?, retry_backoff_ms? }`.
 */
export function loadProxyConfig(
  config: Pick<Config, "openaiApiKey" | "openaiBaseUrl" | "modelsConfigFile" | "defaultModel">,
  env: NodeJS.ProcessEnv = process.env,
): ProxyConfig {
  let raw: Record<string, unknown> = {};
  const file = config.modelsConfigFile ?? "";
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      throw new Error(`models config ${file} cannot be read: ${(e as Error).message}`);
    }
    try {
      raw = objectAt(file, JSON.parse(text), "(top level)");
    } catch (e) {
      if (e instanceof SyntaxError) throw new Error(`models config ${file} is not valid JSON: ${e.message}`);
      throw e;
    }
  }
  const timeoutMs = num(file, raw, "timeout_ms", "") ?? 60_000;
  const maxRetries = num(file, raw, "max_retries", "") ?? 2;
  const providers = new Map<string, Provider>();
  providers.set("local", makeProvider({ name: "local", type: "local", baseUrl: "", apiKey: "", timeoutMs, maxRetries: 0 }));
  if (config.openaiApiKey || config.openaiBaseUrl) {
    if (config.openaiBaseUrl && !httpUrl(config.openaiBaseUrl))
      throw new Error(`OPENAI_BASE_URL is not an http(s) URL: ${JSON.stringify(config.openaiBaseUrl)}`);
    providers.set(
      "openai",
      makeProvider({
        name: "openai",
        type: "openai",
        baseUrl: config.openaiBaseUrl ?? "https://api.openai.com/v1",
        apiKey: config.openaiApiKey ?? "",
        timeoutMs,
        maxRetries,
      }),
    );
  }
  for (const [name, v] of Object.entries(objectAt(file, raw.providers, "providers"))) {
    const p = objectAt(file, v, `providers.${name}`);
    const type = str(file, p, "type", `providers.${name}.`) ?? "openai";
    if (type !== "openai" && type !== "local") fail(file, `providers.${name}.type`, 'must be "openai" or "local"');
    const keyEnv = str(file, p, "api_key_env", `providers.${name}.`);
    const envKey = keyEnv ? env[keyEnv]?.trim() || undefined : undefined;
    const baseUrl = str(file, p, "base_url", `providers.${name}.`) ?? (type === "openai" ? "https://api.openai.com/v1" : "");
    if (type === "openai" && !httpUrl(baseUrl))
      fail(file, `providers.${name}.base_url`, `is not an http(s) URL: ${JSON.stringify(baseUrl)}`);
    providers.set(
      name,
      makeProvider({
        name,
        type,
        baseUrl,
        apiKey: str(file, p, "api_key", `providers.${name}.`) ?? envKey ?? "",
        timeoutMs: num(file, p, "timeout_ms", `providers.${name}.`) ?? timeoutMs,
        maxRetries: type === "local" ? 0 : (num(file, p, "max_retries", `providers.${name}.`) ?? maxRetries),
      }),
    );
  }
  const models = new Map<string, ModelEntry>();
  for (const [name, v] of Object.entries(objectAt(file, raw.models, "models"))) {
    const m = objectAt(file, v, `models.${name}`);
    const provider = str(file, m, "provider", `models.${name}.`);
    if (!provider || !providers.has(provider))
      fail(file, `models.${name}.provider`, `must name a configured provider (${[...providers.keys()].join(", ")})`);
    const kind = str(file, m, "kind", `models.${name}.`) ?? "chat";
    if (kind !== "chat" && kind !== "embedding") fail(file, `models.${name}.kind`, 'must be "chat" or "embedding"');
    models.set(name, {
      name,
      provider,
      upstreamModel: str(file, m, "model", `models.${name}.`) ?? name,
      kind,
      fallbacks: m.fallbacks === undefined ? [] : names(file, m.fallbacks, `models.${name}.fallbacks`),
    });
  }
  const routes = objectAt(file, raw.routes, "routes");
  const table = (key: string) =>
    new Map(Object.entries(objectAt(file, routes[key], `routes.${key}`)).map(([k, v]) => [k, names(file, v, `routes.${key}.${k}`)]));
  const defaultProviderName =
    str(file, raw, "default_provider", "") ??
    (providers.has("openai") ? "openai" : ([...providers.values()].find((p) => p.type === "openai")?.name ?? "local"));
  const defaultProvider =
    providers.get(defaultProviderName) ?? fail(file, "default_provider", `names no configured provider: ${defaultProviderName}`);
  const upstream = defaultProvider.type === "openai";
  return {
    providers,
    models,
    intents: table("intents"),
    applications: table("applications"),
    defaultProvider,
    defaultModel: config.defaultModel ?? str(file, raw, "default_model", "") ?? (upstream ? "gpt-4o-mini" : LOCAL_MODEL),
    defaultEmbeddingModel: str(file, raw, "default_embedding_model", "") ?? (upstream ? "text-embedding-3-small" : LOCAL_MODEL),
    backoffMs: num(file, raw, "retry_backoff_ms", "") ?? 200,
  };
}

/**
 * resolveTargets lists the models to try for a call, in order: the named model (and its
 * fallbacks), else the intent's route, else the application's route, else the default model.
 * A name no entry configures goes to the default provider as it is (the local model when no
 * upstream is configured).
 */
export function resolveTargets(
  cfg: ProxyConfig,
  kind: "chat" | "embedding",
  requested: { model: string; intent: string; application: string },
): { targets: Target[]; route: string } {
  let route: string;
  let start: string[];
  if (requested.model) {
    start = [requested.model];
    route = `model ${requested.model}`;
  } else if (requested.intent && cfg.intents.has(requested.intent)) {
    start = cfg.intents.get(requested.intent)!;
    route = `intent ${requested.intent}`;
  } else if (requested.application && cfg.applications.has(requested.application)) {
    start = cfg.applications.get(requested.application)!;
    route = `application ${requested.application}`;
  } else {
    start = [kind === "chat" ? cfg.defaultModel : cfg.defaultEmbeddingModel];
    route = "default model";
  }
  const targets: Target[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    const entry = cfg.models.get(name);
    if (entry) {
      targets.push({ provider: cfg.providers.get(entry.provider)!, model: entry.upstreamModel });
      entry.fallbacks.forEach(visit);
    } else if (localNames.has(name) || cfg.defaultProvider.type === "local") {
      targets.push({ provider: cfg.providers.get("local")!, model: LOCAL_MODEL });
    } else {
      targets.push({ provider: cfg.defaultProvider, model: name });
    }
  };
  start.forEach(visit);
  return { targets, route };
}

/** listModels lists every model name a caller can use. */
export function listModels(cfg: ProxyConfig): { id: string; provider: string; kind: string }[] {
  const out = new Map<string, { id: string; provider: string; kind: string }>();
  for (const m of cfg.models.values()) out.set(m.name, { id: m.name, provider: m.provider, kind: m.kind });
  if (cfg.defaultProvider.type === "openai") {
    out.set(cfg.defaultModel, out.get(cfg.defaultModel) ?? { id: cfg.defaultModel, provider: cfg.defaultProvider.name, kind: "chat" });
    out.set(
      cfg.defaultEmbeddingModel,
      out.get(cfg.defaultEmbeddingModel) ?? { id: cfg.defaultEmbeddingModel, provider: cfg.defaultProvider.name, kind: "embedding" },
    );
  }
  out.set(LOCAL_MODEL, { id: LOCAL_MODEL, provider: "local", kind: "chat" });
  return [...out.values()];
}

/** UpstreamFailure is how an attempt failed, classified for retry and fallback. */
export interface UpstreamFailure {
  /** status is the upstream HTTP status, 0 when none came. */
  status: number;
  message: string;
  timeout: boolean;
  /** next is what to do next: retry this model, try the next one, or give up. (Not "then": an object with a then property looks like a promise.) */
  next: "retry" | "next" | "stop";
}

/** classify turns an attempt's error into a failure; `timedOut` says the attempt's own timer fired. */
export function classify(err: unknown, timedOut: boolean, timeoutMs: number): UpstreamFailure {
  if (timedOut) return { status: 0, message: `no answer within ${timeoutMs} ms`, timeout: true, next: "retry" };
  if (err instanceof UpstreamStatusError) {
    const status = err.status;
    const message = `HTTP ${status}: ${err.message}`;
    if (status === 429 || status >= 500 || status === 408 || status === 409) return { status, message, timeout: false, next: "retry" };
    if (status === 404 || status === 401 || status === 403) return { status, message, timeout: false, next: "next" };
    return { status, message, timeout: false, next: "stop" };
  }
  if (err instanceof SyntaxError)
    return { status: 0, message: `the upstream answered malformed JSON (${err.message})`, timeout: false, next: "next" };
  if (err instanceof UpstreamConnectionError) return { status: 0, message: err.message, timeout: false, next: "retry" };
  return { status: 0, message: err instanceof Error ? err.message : String(err), timeout: false, next: "next" };
}

/** retryAfterMs is the wait an upstream asked for in its answer (Retry-After or retry-after-ms, capped at 5 s). */
export function retryAfterMs(err: unknown): number | undefined {
  return err instanceof UpstreamStatusError ? err.retryAfterMs : undefined;
}

/** Attempts collects the record of each upstream attempt of one call. */
export type Attempts = AttemptRecord[];

/** sleep waits, or rejects when the signal aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
