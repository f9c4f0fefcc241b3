import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { DatastoreService } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { ExecutorService } from "../gen/shaker/executor/v1/executor_pb.js";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { createDatastoreService } from "../services/datastore/service.js";
import { createEdge } from "../services/edge/edge.js";
import { type Res, sendJson } from "../services/edge/http.js";
import { prepareIsolation } from "../services/executor/isolation.js";
import { createWorkerPool, harnessDir } from "../services/executor/pool.js";
import { createExecutorService } from "../services/executor/service.js";
import { createExecutorStore } from "../services/executor/store.js";
import { createModelProxyService } from "../services/modelproxy/service.js";
import { createRegistryService, DEFAULT_ACCOUNT, generateApiKey } from "../services/registry/service.js";
import { createRegistryStore } from "../services/registry/store.js";
import { headers as authHeaders, createAuth } from "../services/shared/auth.js";
import { createClients, lazyTransport } from "../services/shared/clients.js";
import type { Config } from "../services/shared/config.js";
import { createDirectTransport } from "../services/shared/direct-transport.js";
import { grpcMessageEncoding, grpcUnimplemented } from "../services/shared/grpc-compat.js";
import { withReflection } from "../services/shared/grpc-reflection.js";
import { type Handler, listen } from "../services/shared/listener.js";
import { createTelemetry } from "../services/shared/telemetry.js";
import { serveConsole } from "./static.js";

/** Shaker is a running embedded server: every service and the edge on one port. */
export interface Shaker {
  url: string;
  port: number;
  /** generatedApiKey is the default account's key when this start created it (shown once). */
  generatedApiKey: string | undefined;
  /** workerPids are the Python workers' process ids. */
  workerPids(): number[];
  /** isolation says what confines runs on this host. */
  isolation: string;
  close(): Promise<void>;
}

/**
 * startShaker is the composition root of `shaker serve` in embedded mode: it opens each service's
 * database under the data directory, wires the services to each other through an in-process
 * transport, and serves their RPCs and the edge's REST routes on one port.
 */
export async function startShaker(config: Config): Promise<Shaker> {
  mkdirSync(config.dataDir, { recursive: true });
  const serviceSecret = randomBytes(32).toString("base64url");
  const routes = (router: ConnectRouter) => {
    router.service(RegistryService, registry.impl);
    router.service(ExecutorService, executor.impl);
    router.service(ModelProxyService, modelproxy.impl);
    router.service(DatastoreService, datastore.impl);
  };
  const telemetry = createTelemetry(config.telemetry);
  const clients = createClients(lazyTransport(() => createDirectTransport(routes)));
  // A run's token is refused by every service once the run has ended.
  const runIsLive = (runId: string) => executor.live.has(runId);
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
  const deps = (service: string) => ({ config, auth, clients, dbFile: join(config.dataDir, `${service}.db`) });

  const registryStore = createRegistryStore(join(config.dataDir, "registry.db"));
  const registry = createRegistryService({
    store: registryStore,
    serviceSecret,
    python: config.python,
    defaultTimeoutSeconds: config.defaultTimeoutSeconds,
    maxTimeoutSeconds: config.maxTimeoutSeconds,
    runIsLive,
  });
  const generatedApiKey = bootstrapKey(registryStore, config.apiKey);

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
  const pool = createWorkerPool({
    python: config.python,
    size: config.workers,
    confinementEnv: isolation.workerEnv,
  });
  const executorStore = createExecutorStore(join(config.dataDir, "executor.db"));
  const executor = createExecutorService({
    store: executorStore,
    pool,
    auth,
    registry: clients.registry,
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
  });
  const modelproxy = createModelProxyService(deps("modelproxy"));
  const datastore = createDatastoreService(deps("datastore"));

  const edge = createEdge({
    clients,
    maxBodyBytes: config.maxBodyBytes,
    keepAliveMs: config.sseKeepAliveMs,
    // A large body is read only once its caller's key checked out.
    authenticate: (h) => auth.identify(h),
    maxJsonDepth: config.maxJsonDepth,
    maxUnauthenticatedBodyBytes: config.maxUnauthenticatedBodyBytes,
    telemetry,
  });
  // gRPC clients get the grpc-message encoding grpc-js reads, server reflection (with a key, as
  // every RPC here) and UNIMPLEMENTED for a method nobody serves; other unknown paths a JSON 404.
  const rpc = grpcMessageEncoding(
    connectNodeAdapter({
      routes: withReflection(routes, { authenticate: (h) => auth.identify(h) }),
      readMaxBytes: config.maxBodyBytes,
      // Runs' ctx calls are journaled on their way back, so a resumed run gets their results again.
      interceptors: [executor.callTracer, ...(config.journal ? [executor.journalInterceptor] : [])],
      fallback: grpcUnimplemented((req, res) =>
        sendJson(res as unknown as Res, 404, {
          error: { message: `no route ${req.method} ${req.url}`, type: "invalid_request_error", param: null, code: "not_found" },
        }),
      ),
    }),
  );
  const handler: Handler = (req, res) => {
    if (edge.handle(req, res as unknown as Res) || serveConsole(req as never, res as never)) return;
    edge.guard(req, res as unknown as Res, () => rpc(req as never, res as never));
  };
  const listenOptions = {
    headersTimeoutMs: config.headersTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    maxConnectionsPerAddress: config.maxConnectionsPerAddress,
    maxConnections: config.maxConnections,
  };
  const listener = await listen(handler, { port: config.port, host: config.host }, listenOptions);
  // Runs reach the services through a Unix socket: a confined run has no network at all.
  const runListener = await listen(handler, { path: isolation.socketPath }, listenOptions);
  // Runs a previous process left in flight resume (or wait for their callers) once runs can call in.
  executor.recover();

  let closed: Promise<void> | undefined;
  return {
    url: listener.url,
    port: listener.port,
    generatedApiKey,
    workerPids: () => pool.pids(),
    isolation: isolation.summary,
    close() {
      closed ??= (async () => {
        await listener.close();
        // Runs still in flight stay recorded as such: the next start resumes them.
        executor.shutDown();
        await pool.close();
        await runListener.close();
        isolation.close();
        await modelproxy.close();
        await datastore.close();
        executorStore.close();
        registry.close();
        registryStore.close();
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
function bootstrapKey(store: ReturnType<typeof createRegistryStore>, apiKey: string | undefined): string | undefined {
  const account = store.ensureAccount(DEFAULT_ACCOUNT, true);
  if (apiKey) {
    store.insertKey(account.id, apiKey);
    return undefined;
  }
  if (store.keysOf(account.id).some((k) => k.revokedAt === null)) return undefined;
  const key = generateApiKey();
  store.insertKey(account.id, key);
  return key;
}
