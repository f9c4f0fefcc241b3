import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { hostname } from "node:os";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextValues,
  type Interceptor,
  type ServiceImpl,
  type Transport,
} from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import { DatastoreService } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { ExecutorService } from "../gen/shaker/executor/v1/executor_pb.js";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { searchResponseEncoder } from "../services/datastore/search-encoding.js";
import { createDatastoreService } from "../services/datastore/service.js";
import { createDatastoreStore } from "../services/datastore/store.js";
import { createEdge } from "../services/edge/edge.js";
import { createBodyGuard } from "../services/edge/guard.js";
import { type Res, sendJson } from "../services/edge/http.js";
import { prepareIsolation } from "../services/executor/isolation.js";
import { createWorkerPool, harnessDir } from "../services/executor/pool.js";
import { createExecutorService } from "../services/executor/service.js";
import { createExecutorStore } from "../services/executor/store.js";
import { createModelProxyService } from "../services/modelproxy/service.js";
import { createModelProxyStore } from "../services/modelproxy/store.js";
import { createClusterService } from "../services/registry/cluster.js";
import { createRegistryService, DEFAULT_ACCOUNT, generateApiKey } from "../services/registry/service.js";
import { createRegistryStore, type RegistryStore } from "../services/registry/store.js";
import { headers as authHeaders, createAuth, runLiveness } from "../services/shared/auth.js";
import { createClients, lazyTransport } from "../services/shared/clients.js";
import { type Config, databaseLocation, type ServiceName } from "../services/shared/config.js";
import { createDirectTransport } from "../services/shared/direct-transport.js";
import { hideInternalErrors } from "../services/shared/errors.js";
import { executorRouter, ownerKey } from "../services/shared/executor-router.js";
import { forwardingImpl } from "../services/shared/forward.js";
import { grpcMessageEncoding, grpcUnimplemented } from "../services/shared/grpc-compat.js";
import { withReflection } from "../services/shared/grpc-reflection.js";
import { type Handler, listen } from "../services/shared/listener.js";
import { type Membership, startMembership } from "../services/shared/membership.js";
import { createTelemetry } from "../services/shared/telemetry.js";
import { createUnaryFastPath } from "../services/shared/unary-fast-path.js";
import { serveConsole } from "./static.js";

/** Shaker is a running server: every service and the edge on one port, or those it was asked to run. */
export interface Shaker {
  url: string;
  port: number;
  /** generatedApiKey is the default account's key when this start created it (shown once). */
  generatedApiKey: string | undefined;
  /** workerPids are the Python workers' process ids (none without the Executor). */
  workerPids(): number[];
  /** isolation says what confines runs on this host (empty without the Executor). */
  isolation: string;
  /** database says where the services' tables are: the data directory's SQLite files, or PostgreSQL. */
  database: string;
  /** datastoreSearch says how the datastores search (empty without the Datastore). */
  datastoreSearch: string;
  /** services are the services this process runs. */
  services: ServiceName[];
  close(): Promise<void>;
}

/** The RPC services, by name, and what a process that does not run one needs to reach it. */
const rpcServices = { registry: RegistryService, executor: ExecutorService, modelproxy: ModelProxyService, datastore: DatastoreService };
type RpcName = keyof typeof rpcServices;
const rpcNames = Object.keys(rpcServices) as RpcName[];

/**
 * startShaker is the composition root of `shaker serve`. It runs the services of config.services
 * (all by default: embedded mode, one process, one port) and reaches the others at their URLs
 * (config.peers, over HTTP/2 with the services' shared secret): each service gets a client per
 * peer, in-process for the ones it runs with, remote for the others. It opens the databases of the
 * services it runs under the data directory, and serves their RPCs (and the edge's REST routes, if
 * it runs the edge) on one port.
 */
export async function startShaker(config: Config): Promise<Shaker> {
  const runs = new Set<ServiceName>(config.services);
  const remote = rpcNames.filter((n) => !runs.has(n));
  // Executors need no URL: they join the cluster, and edges find them there (SHAKER_EXECUTOR_URL,
  // when set, serves until the first heartbeat answers).
  for (const name of remote) {
    if (!config.peers[name] && name !== "executor") {
      throw new Error(
        `SHAKER_${name.toUpperCase()}_URL is required: this process does not run the ${name} (it runs ${config.services.join(",")})`,
      );
    }
  }
  if (remote.length > 0 && !config.serviceSecret) {
    throw new Error(
      "SHAKER_SERVICE_SECRET is required when any service runs in another process: every process of one Shaker must share it",
    );
  }
  mkdirSync(config.dataDir, { recursive: true });
  const serviceSecret = config.serviceSecret ?? randomBytes(32).toString("base64url");
  const telemetry = createTelemetry(config.telemetry);

  // The services this process runs, registered as they are built; the others are reached remotely.
  const impls: { [K in RpcName]?: ServiceImpl<(typeof rpcServices)[K]> } = {};
  // …and the routes of services only the other processes call (the cluster's membership).
  const extraRoutes: ((router: ConnectRouter) => void)[] = [];
  const localRoutes = (router: ConnectRouter) => {
    for (const name of rpcNames) if (impls[name]) router.service(rpcServices[name] as never, impls[name] as never);
    for (const routes of extraRoutes) routes(router);
  };
  const local = lazyTransport(() => createDirectTransport(localRoutes));
  const remoteTransports = new Map<string, Transport>();
  const remoteTransport = (baseUrl: string) => {
    let transport = remoteTransports.get(baseUrl);
    if (!transport) remoteTransports.set(baseUrl, (transport = createGrpcTransport({ baseUrl })));
    return transport;
  };
  // This process in the cluster: its id (its executor's, on run records) and where others reach it.
  let port = config.port;
  const nodeId = () => config.executorId ?? `${hostname()}:${port}`;
  const advertiseUrl = () => config.advertiseUrl ?? `http://${["0.0.0.0", "::"].includes(config.host) ? hostname() : config.host}:${port}`;
  let membership: Membership | undefined;
  /** liveExecutorIds are the executors the cluster lists as live; undefined before it first answered. */
  const liveExecutorIds = () => {
    const nodes = membership?.nodes() ?? [];
    return nodes.length === 0 ? undefined : nodes.filter((n) => n.live && n.services.includes("executor")).map((n) => n.id);
  };
  // Each Executor call goes to the executor it is for (services/shared/executor-router.ts): this
  // process's own in process, the others at the URL they advertise.
  const executorTransport = executorRouter({
    nodes: () => membership?.nodes() ?? [],
    transportFor: (node) => remoteTransport(node.url),
    local: runs.has("executor") ? { id: nodeId, transport: local } : undefined,
    fallback: config.peers.executor ? remoteTransport(config.peers.executor) : undefined,
  });
  const clients = createClients((name) => {
    if (name === "executor") return executorTransport;
    return runs.has(name) ? local : remoteTransport(config.peers[name]!);
  });
  const serviceHeaders = { [authHeaders.serviceToken]: serviceSecret };
  // A run's token is refused by every service once the run has ended: the executor its token names
  // says so (at once when it runs here; cached for a second when it runs elsewhere). A check that
  // cannot get an answer fails the call (Unavailable), never calls a live run ended.
  const runIsLive = runLiveness(
    async (runId, executor) =>
      (
        await clients.executor.checkRun(
          { runId },
          { headers: serviceHeaders, timeoutMs: 10_000, contextValues: createContextValues().set(ownerKey, executor) },
        )
      ).live,
    runs.has("executor") ? 0 : 1000,
  );
  const auth = createAuth({
    serviceSecret,
    runIsLive,
    authenticateKey: async (apiKey) => {
      try {
        const resp = await clients.registry.authenticate({ apiKey }, { headers: { [authHeaders.serviceToken]: serviceSecret } });
        return { accountId: resp.account!.id, admin: resp.account!.admin, keyId: resp.keyId };
      } catch (e) {
        if (ConnectError.from(e).code === Code.Unauthenticated) return undefined;
        throw e;
      }
    },
  });
  const closers: (() => unknown)[] = [];

  let generatedApiKey: string | undefined;
  let datastoreSearch = "";
  if (runs.has("registry")) {
    const registryStore = await createRegistryStore(databaseLocation(config, "registry"), { poolSize: config.databasePoolSize });
    const registry = createRegistryService({
      store: registryStore,
      serviceSecret,
      python: config.python,
      defaultTimeoutSeconds: config.defaultTimeoutSeconds,
      maxTimeoutSeconds: config.maxTimeoutSeconds,
      runIsLive,
    });
    impls.registry = registry.impl;
    extraRoutes.push(createClusterService({ store: registryStore.cluster, auth, deadAfterMs: config.nodeDeadAfterMs }).routes);
    generatedApiKey = await bootstrapKey(registryStore, config.apiKey);
    closers.push(
      () => registry.close(),
      () => registryStore.close(),
    );
  }
  if (runs.has("modelproxy")) {
    const modelproxyStore = await createModelProxyStore(databaseLocation(config, "modelproxy"), { poolSize: config.databasePoolSize });
    const modelproxy = createModelProxyService({ store: modelproxyStore, config, auth });
    impls.modelproxy = modelproxy.impl;
    closers.push(
      () => modelproxy.close(),
      () => modelproxyStore.close(),
    );
  }
  if (runs.has("datastore")) {
    const datastoreStore = await createDatastoreStore(databaseLocation(config, "datastore"), { poolSize: config.databasePoolSize });
    const datastore = createDatastoreService({ store: datastoreStore, auth, clients, maxJsonDepth: config.maxJsonDepth });
    impls.datastore = datastore.impl;
    datastoreSearch = datastore.describe();
    closers.push(
      () => datastore.close(),
      () => datastoreStore.close(),
    );
  }

  const listenOptions = {
    headersTimeoutMs: config.headersTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    maxConnectionsPerAddress: config.maxConnectionsPerAddress,
    maxConnections: config.maxConnections,
  };
  const rpcAdapter = (routes: (router: ConnectRouter) => void, interceptors: Interceptor[]) => {
    // gRPC clients get the grpc-message encoding grpc-js reads, server reflection (with a key, as
    // every RPC here) and UNIMPLEMENTED for a method nobody serves; other unknown paths a JSON 404.
    const connect = grpcMessageEncoding(
      connectNodeAdapter({
        routes: withReflection(routes, { authenticate: (h) => auth.identify(h) }),
        readMaxBytes: config.maxBodyBytes,
        interceptors: [hideInternalErrors, ...interceptors],
        fallback: grpcUnimplemented((req, res) =>
          sendJson(res as unknown as Res, 404, {
            error: { message: `no route ${req.method} ${req.url}`, type: "invalid_request_error", param: null, code: "not_found" },
          }),
        ),
      }),
    );
    // Unary calls skip Connect-ES's server (services/shared/unary-fast-path.ts), where no interceptor
    // of their own has to see them.
    if (interceptors.length > 0) return connect;
    const fast = createUnaryFastPath(routes, { readMaxBytes: config.maxBodyBytes, encoders: [searchResponseEncoder] });
    return ((req, res) => fast(req as never, res as never) || connect(req, res)) as typeof connect;
  };

  let listener: Awaited<ReturnType<typeof listen>> | undefined;
  let executor: ReturnType<typeof createExecutorService> | undefined;
  let pool: ReturnType<typeof createWorkerPool> | undefined;
  let isolationSummary = "";
  let runHandler: Handler | undefined;
  let runSocket: ReturnType<typeof prepareIsolation> | undefined;
  if (runs.has("executor")) {
    const isolation = prepareIsolation({
      mode: config.sandbox,
      python: config.python,
      harnessDir,
      dataDir: config.dataDir,
      processesPerRun: config.runMaxProcesses,
      memoryBytesPerRun: config.runMemoryBytes,
      tmpBytesPerRun: config.runTmpBytes,
      readPaths: config.runReadPaths,
    });
    runSocket = isolation;
    isolationSummary = isolation.summary;
    pool = createWorkerPool({ python: config.python, size: config.workers, confinementEnv: isolation.workerEnv });
    const executorStore = await createExecutorStore(databaseLocation(config, "executor"), { poolSize: config.databasePoolSize });
    executor = createExecutorService({
      store: executorStore,
      pool,
      auth,
      clients,
      rpcUrl: () => isolation.rpcUrl,
      // Unconfined runs could read every account's data: only admins' may run where the kernel cannot confine.
      unconfinedRunsForAdminsOnly: !isolation.confined && config.sandbox !== "none" ? isolation.why : undefined,
      maxConcurrentRuns: config.maxConcurrentRuns,
      maxConcurrentRunsPerAccount: config.maxConcurrentRunsPerAccount,
      maxNestingDepth: config.maxNestingDepth,
      httpAllow: config.httpAllow,
      limits: { memoryBytes: config.runMemoryBytes, openFiles: 256, fileBytes: 64 * 1024 * 1024 },
      disconnectGraceMs: config.disconnectGraceMs,
      telemetry,
      executorId: nodeId,
      // On PostgreSQL the executors share their runs' records: each adopts those of executors that died.
      liveExecutors: config.databaseUrl ? liveExecutorIds : undefined,
    });
    impls.executor = executor.impl;
    closers.push(() => executorStore.close());
    // Runs reach every service through the Executor's Unix socket (a confined run has no network):
    // the services of this process directly, the others forwarded to their URLs. Their ctx calls are
    // traced and journaled on the way, so a resumed run gets their results again.
    // A call passed on for a run found live here (its token checked against this Executor's runs)
    // says so, and the service that answers asks no further.
    const vouch = async (requestHeader: Headers) => {
      const identity = await auth.identify(requestHeader);
      return identity.kind === "run" ? auth.vouchFor(identity.claims) : undefined;
    };
    const runRoutes = (router: ConnectRouter) => {
      for (const name of rpcNames) {
        const impl = impls[name] ?? forwardingImpl(rpcServices[name] as never, clients[name] as never, vouch);
        router.service(rpcServices[name] as never, impl as never);
      }
    };
    const runRpc = rpcAdapter(runRoutes, [executor.callTracer, ...(config.journal ? [executor.journalInterceptor] : [])]);
    runHandler = (req, res) => runRpc(req as never, res as never);
  }

  const edge = runs.has("edge")
    ? createEdge({
        clients,
        maxBodyBytes: config.maxBodyBytes,
        keepAliveMs: config.sseKeepAliveMs,
        // A large body is read only once its caller's key checked out.
        authenticate: (h) => auth.identify(h),
        maxJsonDepth: config.maxJsonDepth,
        maxUnauthenticatedBodyBytes: config.maxUnauthenticatedBodyBytes,
        telemetry,
      })
    : undefined;
  const rpc = rpcAdapter(localRoutes, []);
  const guard = createBodyGuard({ authenticate: (h) => auth.identify(h), maxUnauthenticatedBodyBytes: config.maxUnauthenticatedBodyBytes });
  const handler: Handler = (req, res) => {
    if (edge?.handle(req, res as unknown as Res) || (edge && serveConsole(req as never, res as never))) return;
    guard(req, res as unknown as Res, "rpc", () => rpc(req as never, res as never));
  };
  listener = await listen(handler, { port: config.port, host: config.host }, listenOptions);
  port = listener.port;
  // This process joins the cluster: edges send runs to its executor once they hear of it.
  membership = startMembership({
    cluster: clients.cluster,
    headers: serviceHeaders,
    self: {
      id: nodeId(),
      services: config.services,
      url: advertiseUrl(),
      capacity: runs.has("executor") ? config.maxConcurrentRuns : 0,
      runsInFlight: () => executor?.live.size ?? 0,
    },
    intervalMs: Math.max(200, Math.floor(config.nodeDeadAfterMs / 5)),
    onNodes: () => void executor?.takeOver().catch((e: Error) => process.stderr.write(`could not take over runs: ${e.message}\n`)),
    warn: config.quiet ? undefined : (message) => process.stderr.write(`${message}\n`),
  });
  const runListener = runSocket && runHandler ? await listen(runHandler, { path: runSocket.socketPath }, listenOptions) : undefined;
  // Runs a previous process left in flight resume (or wait for their callers) once runs can call in.
  await executor?.recover();

  let closed: Promise<void> | undefined;
  return {
    url: listener.url,
    port: listener.port,
    generatedApiKey,
    workerPids: () => pool?.pids() ?? [],
    isolation: isolationSummary,
    database: config.databaseUrl ? `PostgreSQL at ${redactedUrl(config.databaseUrl)}` : config.dataDir,
    datastoreSearch,
    services: config.services,
    close() {
      closed ??= (async () => {
        await membership?.close();
        await listener.close();
        // Runs still in flight stay recorded as such: the next start resumes them.
        executor?.close();
        await pool?.close();
        await runListener?.close();
        runSocket?.close();
        for (const close of closers) await close();
        await telemetry.close();
      })();
      return closed;
    },
  };
}

/**
 * bootstrapKey gives the default account a key: SHAKER_API_KEY when set, else a new one on a first
 * start (returned so it can be printed once; only its hash is stored).
 */
async function bootstrapKey(store: RegistryStore, apiKey: string | undefined): Promise<string | undefined> {
  const account = await store.ensureAccount(DEFAULT_ACCOUNT, true);
  if (apiKey) {
    await store.insertKey(account.id, apiKey);
    return undefined;
  }
  if ((await store.keysOf(account.id)).some((k) => k.revokedAt === null)) return undefined;
  const key = generateApiKey();
  await store.insertKey(account.id, key);
  return key;
}

/** redactedUrl is a database URL fit to print: without its password. */
function redactedUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparsable URL)";
  }
}
