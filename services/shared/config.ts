import { join, resolve } from "node:path";
import { isPostgresUrl, type StoredService } from "./dialects.js";

/** Config is everything `shaker serve` reads from its environment. */
export interface Config {
  /** host to listen on; `SHAKER_HOST`, default 127.0.0.1. */
  host: string;
  /** port to listen on; `PORT`, default 8080 (0 picks a free one). */
  port: number;
  /** dataDir holds one SQLite file per service; `SHAKER_DATA_DIR`, default ./data. */
  dataDir: string;
  /**
   * databaseUrl, a postgres:// URL, puts every service's tables in PostgreSQL (one schema per
   * service) instead of SQLite files under dataDir; `SHAKER_DATABASE_URL`.
   */
  databaseUrl: string | undefined;
  /** databasePoolSize bounds each service's PostgreSQL connections; `SHAKER_DATABASE_POOL_SIZE`, default 8. */
  databasePoolSize: number;
  /** apiKey, when set, becomes a key of the default account at start; `SHAKER_API_KEY`. */
  apiKey: string | undefined;
  /** python is the interpreter for workers; `SHAKER_PYTHON`, default python3. */
  python: string;
  /** maxBodyBytes bounds request bodies; `SHAKER_MAX_BODY_BYTES`, default 10 MiB. */
  maxBodyBytes: number;
  /** defaultTimeoutSeconds bounds runs whose version sets none; default 60. */
  defaultTimeoutSeconds: number;
  /** maxTimeoutSeconds is the largest timeout an upload may ask for; `SHAKER_MAX_TIMEOUT_SECONDS`, default 3600. */
  maxTimeoutSeconds: number;
  /** maxConcurrentRuns bounds runs in flight; `SHAKER_MAX_CONCURRENT_RUNS`, default 1000. */
  maxConcurrentRuns: number;
  /** maxConcurrentRunsPerAccount bounds one account's runs in flight; default 500. */
  maxConcurrentRunsPerAccount: number;
  /** workers is the number of long-lived Python workers; `SHAKER_WORKERS`, default 2. */
  workers: number;
  /** maxNestingDepth bounds ctx.workflows.run nesting; `SHAKER_MAX_NESTING_DEPTH`, default 5. */
  maxNestingDepth: number;
  /** sseKeepAliveMs is the interval of `: keep-alive` comments on quiet streams; `SHAKER_SSE_KEEPALIVE_MS`, default 15000. */
  sseKeepAliveMs: number;
  /**
   * disconnectGraceMs is how long a run goes on after every caller waiting for it disconnected, for
   * one to come back (a rejoin, an Idempotency-Key or SDK retry); `SHAKER_DISCONNECT_GRACE_MS`, default 5000.
   */
  disconnectGraceMs: number;
  /**
   * journal journals runs' ctx calls so that a run resumed after a crash makes none of them twice;
   * `SHAKER_JOURNAL=off` turns it off (resumed runs then make every call again). Default on.
   */
  journal: boolean;
  /** telemetry says where traces go: the OpenTelemetry variables (OTEL_EXPORTER_OTLP_ENDPOINT, …); off without an endpoint. */
  telemetry: TelemetryOptions;
  /** openaiApiKey is the key of the default OpenAI-compatible upstream; `OPENAI_API_KEY`. */
  openaiApiKey: string | undefined;
  /** openaiBaseUrl is the default upstream's base URL; `OPENAI_BASE_URL` (the OpenAI API when only a key is set). */
  openaiBaseUrl: string | undefined;
  /** modelsConfigFile is a JSON file of providers, models and routes for the ModelProxy; `SHAKER_MODELS_CONFIG`. */
  modelsConfigFile: string | undefined;
  /** defaultModel serves calls that name no model when an upstream is configured; `SHAKER_DEFAULT_MODEL`. */
  defaultModel: string | undefined;
  /** runMemoryBytes caps each run's address space (RLIMIT_AS); `SHAKER_RUN_MEMORY_BYTES`, default 1 GiB (0: no cap). */
  runMemoryBytes: number;
  /**
   * sandbox: `auto` (default) confines every run by the kernel where it allows (and refuses runs of
   * accounts other than admins' where it does not); `none` confines nothing, knowingly; `SHAKER_SANDBOX`.
   */
  sandbox: "auto" | "none";
  /** runMaxProcesses caps one run's processes and threads (pids cgroup and RLIMIT_NPROC); `SHAKER_RUN_MAX_PROCESSES`, default 64 (0: no cap). */
  runMaxProcesses: number;
  /** runTmpBytes is the size of each confined run's private /tmp; `SHAKER_RUN_TMP_BYTES`, default 64 MiB. */
  runTmpBytes: number;
  /** runReadPaths are further host paths confined runs may read (read-only); `SHAKER_RUN_READ_PATHS`, colon-separated. */
  runReadPaths: string[];
  /**
   * httpAllow lists what ctx.http may reach besides public addresses; `SHAKER_HTTP_ALLOW`, comma-separated:
   * CIDR ranges (`10.0.0.0/8`), IP addresses (`10.1.2.3`, `10.1.2.3:8080`, `[::1]:8080`), host names
   * (`api.internal`, `api.internal:8443`, `*.internal`). Loopback, link-local, private, CGNAT, multicast
   * and reserved addresses are refused unless listed.
   */
  httpAllow: string[];
  /** headersTimeoutMs bounds a connection's first bytes and a request's headers; `SHAKER_HEADERS_TIMEOUT_MS`, default 10000. */
  headersTimeoutMs: number;
  /** idleTimeoutMs closes connections (and HTTP/2 sessions) idle between requests; `SHAKER_IDLE_TIMEOUT_MS`, default 65000. */
  idleTimeoutMs: number;
  /** maxConnectionsPerAddress caps one client address's open connections; `SHAKER_MAX_CONNECTIONS_PER_ADDRESS`, default 256 (0: no cap; behind a proxy on this host, 0). */
  maxConnectionsPerAddress: number;
  /** maxConnections caps all open TCP connections; `SHAKER_MAX_CONNECTIONS`, default 0 (no cap). */
  maxConnections: number;
  /** maxUnauthenticatedBodyBytes: a larger body (or one of unknown length) is read only once its caller's key checked out; `SHAKER_MAX_UNAUTHENTICATED_BODY_BYTES`, default 64 KiB. */
  maxUnauthenticatedBodyBytes: number;
  /** maxJsonDepth refuses request bodies nested deeper (400); `SHAKER_MAX_JSON_DEPTH`, default 64 (at most 100, protobuf's own limit). */
  maxJsonDepth: number;
  /** quiet silences the start-up banner (tests). */
  quiet: boolean;
  /**
   * services are the services this process runs (`shaker serve --services LIST` or `SHAKER_SERVICES`,
   * comma-separated); default all of them.
   */
  services: ServiceName[];
  /** peers are the URLs of the services this process does not run (`SHAKER_REGISTRY_URL`, …). */
  peers: Partial<Record<ServiceName, string>>;
  /**
   * serviceSecret authenticates the services to each other and signs run tokens
   * (`SHAKER_SERVICE_SECRET`): required when any service is remote; a random one otherwise.
   */
  serviceSecret: string | undefined;
  /**
   * executorId names this process in the cluster and its Executor on run records
   * (`SHAKER_EXECUTOR_ID`); default its host name and port.
   */
  executorId: string | undefined;
  /**
   * advertiseUrl is where the other processes reach this one (`SHAKER_ADVERTISE_URL`); default
   * http:// its host (its host name when it listens on every address) and port.
   */
  advertiseUrl: string | undefined;
  /**
   * nodeDeadAfterMs is how long a process may miss heartbeats before the cluster counts it dead: no
   * run is sent to it, and a live executor takes over its runs (`SHAKER_NODE_DEAD_AFTER_SECONDS`, default 15).
   */
  nodeDeadAfterMs: number;
}

/** Options of createTelemetry (telemetry.ts), read from the OpenTelemetry variables the SDKs define. */
export interface TelemetryOptions {
  /**
   * endpoint is the OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`; spans go to its /v1/traces),
   * or tracesEndpoint the whole URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). Without either, nothing
   * is traced and every method costs a branch.
   */
  endpoint?: string;
  tracesEndpoint?: string;
  /** serviceName is `service.name` (`OTEL_SERVICE_NAME`, default "shaker"). */
  serviceName?: string;
  /** exportDelayMs is how long spans wait to be sent in a batch (`OTEL_BSP_SCHEDULE_DELAY`, default 5000). */
  exportDelayMs?: number;
}

/** telemetryOptionsFrom reads the OpenTelemetry environment variables the SDKs define. */
export function telemetryOptionsFrom(env: NodeJS.ProcessEnv): TelemetryOptions {
  const delay = Number(env.OTEL_BSP_SCHEDULE_DELAY);
  return {
    endpoint: env.OTEL_EXPORTER_OTLP_ENDPOINT || undefined,
    tracesEndpoint: env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || undefined,
    serviceName: env.OTEL_SERVICE_NAME || undefined,
    exportDelayMs: Number.isFinite(delay) && delay > 0 ? delay : undefined,
  };
}

/** The services a process may run. */
export const serviceNames = ["registry", "executor", "modelproxy", "datastore", "edge"] as const;
export type ServiceName = (typeof serviceNames)[number];

/** parseServices reads a --services list: known names, comma-separated, at least one. */
export function parseServices(raw: string | undefined, from = "SHAKER_SERVICES"): ServiceName[] {
  if (raw === undefined) return [...serviceNames];
  const names = raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  const unknown = names.filter((n) => !(serviceNames as readonly string[]).includes(n));
  if (unknown.length > 0 || names.length === 0) {
    throw new Error(`${from} must list some of ${serviceNames.join(", ")} (comma-separated), got ${JSON.stringify(raw)}`);
  }
  return serviceNames.filter((n) => names.includes(n));
}

/** databaseUrl checks SHAKER_DATABASE_URL: a postgres:// URL, or unset for SQLite files. */
function databaseUrl(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (!isPostgresUrl(raw)) {
    throw new Error(
      `SHAKER_DATABASE_URL must be a postgres:// or postgresql:// URL, got ${JSON.stringify(raw.replace(/\/\/[^@/]*@/, "//…@"))}`,
    );
  }
  return raw;
}

/** databaseLocation is where a service's tables are: the PostgreSQL URL, else its SQLite file under the data directory. */
export function databaseLocation(config: Pick<Config, "databaseUrl" | "dataDir">, service: StoredService): string {
  return config.databaseUrl ?? join(config.dataDir, `${service}.db`);
}

function envString(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name];
  // An empty variable counts as unset, as shells and .env files produce them by accident.
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

function envInt(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = envString(env, name);
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function sandboxMode(raw: string | undefined): Config["sandbox"] {
  if (raw === undefined) return "auto";
  if (raw === "auto" || raw === "none") return raw;
  throw new Error(`SHAKER_SANDBOX must be auto or none, got ${JSON.stringify(raw)}`);
}

/** loadConfig reads the configuration from the environment; overrides win. Throws on malformed numbers. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Config> = {}): Config {
  return {
    host: envString(env, "SHAKER_HOST") ?? "127.0.0.1",
    port: envInt(env, "PORT", 8080),
    dataDir: resolve(envString(env, "SHAKER_DATA_DIR") ?? "./data"),
    databaseUrl: databaseUrl(envString(env, "SHAKER_DATABASE_URL")),
    databasePoolSize: Math.max(1, envInt(env, "SHAKER_DATABASE_POOL_SIZE", 8)),
    apiKey: envString(env, "SHAKER_API_KEY"),
    python: envString(env, "SHAKER_PYTHON") ?? "python3",
    maxBodyBytes: envInt(env, "SHAKER_MAX_BODY_BYTES", 10 * 1024 * 1024),
    defaultTimeoutSeconds: envInt(env, "SHAKER_DEFAULT_TIMEOUT_SECONDS", 60),
    maxTimeoutSeconds: envInt(env, "SHAKER_MAX_TIMEOUT_SECONDS", 3600),
    maxConcurrentRuns: envInt(env, "SHAKER_MAX_CONCURRENT_RUNS", 1000),
    maxConcurrentRunsPerAccount: envInt(env, "SHAKER_MAX_CONCURRENT_RUNS_PER_ACCOUNT", 500),
    workers: Math.max(1, envInt(env, "SHAKER_WORKERS", 2)),
    maxNestingDepth: envInt(env, "SHAKER_MAX_NESTING_DEPTH", 5),
    sseKeepAliveMs: Math.max(1, envInt(env, "SHAKER_SSE_KEEPALIVE_MS", 15_000)),
    disconnectGraceMs: envInt(env, "SHAKER_DISCONNECT_GRACE_MS", 5000),
    journal: envString(env, "SHAKER_JOURNAL") !== "off",
    telemetry: telemetryOptionsFrom(env),
    openaiApiKey: envString(env, "OPENAI_API_KEY"),
    openaiBaseUrl: envString(env, "OPENAI_BASE_URL"),
    modelsConfigFile: envString(env, "SHAKER_MODELS_CONFIG"),
    defaultModel: envString(env, "SHAKER_DEFAULT_MODEL"),
    runMemoryBytes: envInt(env, "SHAKER_RUN_MEMORY_BYTES", 1024 * 1024 * 1024),
    sandbox: sandboxMode(envString(env, "SHAKER_SANDBOX")),
    runMaxProcesses: envInt(env, "SHAKER_RUN_MAX_PROCESSES", 64),
    runTmpBytes: envInt(env, "SHAKER_RUN_TMP_BYTES", 64 * 1024 * 1024),
    runReadPaths: (envString(env, "SHAKER_RUN_READ_PATHS") ?? "").split(":").filter((p) => p.startsWith("/")),
    httpAllow: (envString(env, "SHAKER_HTTP_ALLOW") ?? "")
      .split(",")
      .map((e) => e.trim())
      .filter((e) => e !== ""),
    headersTimeoutMs: envInt(env, "SHAKER_HEADERS_TIMEOUT_MS", 10_000),
    idleTimeoutMs: envInt(env, "SHAKER_IDLE_TIMEOUT_MS", 65_000),
    maxConnectionsPerAddress: envInt(env, "SHAKER_MAX_CONNECTIONS_PER_ADDRESS", 256),
    maxConnections: envInt(env, "SHAKER_MAX_CONNECTIONS", 0),
    maxUnauthenticatedBodyBytes: envInt(env, "SHAKER_MAX_UNAUTHENTICATED_BODY_BYTES", 64 * 1024),
    maxJsonDepth: Math.min(100, Math.max(1, envInt(env, "SHAKER_MAX_JSON_DEPTH", 64))),
    quiet: false,
    services: parseServices(envString(env, "SHAKER_SERVICES")),
    peers: Object.fromEntries(
      serviceNames.flatMap((n) => {
        const url = envString(env, `SHAKER_${n.toUpperCase()}_URL`);
        return url ? [[n, url.replace(/\/+$/, "")]] : [];
      }),
    ),
    serviceSecret: envString(env, "SHAKER_SERVICE_SECRET"),
    executorId: envString(env, "SHAKER_EXECUTOR_ID"),
    advertiseUrl: envString(env, "SHAKER_ADVERTISE_URL"),
    nodeDeadAfterMs: Math.max(1, envInt(env, "SHAKER_NODE_DEAD_AFTER_SECONDS", 15)) * 1000,
    ...overrides,
  };
}
