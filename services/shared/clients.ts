import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { ClusterService } from "../../gen/shaker/cluster/v1/cluster_pb.js";
import { DatastoreService } from "../../gen/shaker/datastore/v1/datastore_pb.js";
import { ExecutorService } from "../../gen/shaker/executor/v1/executor_pb.js";
import { ModelProxyService } from "../../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { RegistryService } from "../../gen/shaker/registry/v1/registry_pb.js";

/** Clients are the generated clients of the four services: the only way one service reaches another. */
export interface Clients {
  registry: Client<typeof RegistryService>;
  executor: Client<typeof ExecutorService>;
  modelproxy: Client<typeof ModelProxyService>;
  datastore: Client<typeof DatastoreService>;
  /** cluster is the membership, served with the Registry (services/registry/cluster.ts). */
  cluster: Client<typeof ClusterService>;
}

/**
 * createClients builds every service's client: on one transport, or on the transport each service
 * is reached by (in-process for the services a process runs, HTTP/2 for the others).
 */
export function createClients(transport: Transport | ((service: Exclude<keyof Clients, "cluster">) => Transport)): Clients {
  const of = typeof transport === "function" ? transport : () => transport;
  return {
    registry: createClient(RegistryService, of("registry")),
    executor: createClient(ExecutorService, of("executor")),
    modelproxy: createClient(ModelProxyService, of("modelproxy")),
    datastore: createClient(DatastoreService, of("datastore")),
    cluster: createClient(ClusterService, of("registry")),
  };
}

/**
 * lazyTransport defers building a transport to its first call, so services that call each other
 * can be wired before all of them exist.
 */
export function lazyTransport(build: () => Transport): Transport {
  let transport: Transport | undefined;
  const get = () => (transport ??= build());
  return {
    unary: (...args) => get().unary(...args),
    stream: (...args) => get().stream(...args),
  };
}
