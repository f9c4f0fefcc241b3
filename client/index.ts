// The typed clients of Shaker's four services, for TypeScript programs:
//
//   import { createShakerClients } from "shaker/client";
//   const shaker = createShakerClients({ baseUrl: "http://127.0.0.1:8080", apiKey: process.env.SHAKER_API_KEY });
//   const { workflows } = await shaker.registry.listWorkflows({});
//
// The descriptors and message types are the ones `npx buf generate` writes into gen/ from proto/.
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { DatastoreService } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { ExecutorService } from "../gen/shaker/executor/v1/executor_pb.js";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { type Clients, createClients } from "../services/shared/clients.js";

export * as datastore from "../gen/shaker/datastore/v1/datastore_pb.js";
export * as executor from "../gen/shaker/executor/v1/executor_pb.js";
export * as modelproxy from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
export * as registry from "../gen/shaker/registry/v1/registry_pb.js";
export { type Clients, DatastoreService, ExecutorService, ModelProxyService, RegistryService };

/** Options of createShakerTransport and the create*Client helpers. */
export interface ShakerClientOptions {
  /** baseUrl is the Shaker server, e.g. http://127.0.0.1:8080 (default: SHAKER_URL, else that). */
  baseUrl?: string;
  /** apiKey is sent as `Authorization: Bearer <key>` on every call (default: SHAKER_API_KEY). */
  apiKey?: string;
  /** protocol is "connect" (default), "grpc" or "grpc-web"; the server answers all three on one port. */
  protocol?: "connect" | "grpc" | "grpc-web";
  /** httpVersion is "1.1" (default for connect and grpc-web) or "2" (always for grpc; h2c on http://). */
  httpVersion?: "1.1" | "2";
  /** interceptors run around every call, after the API key is added. */
  interceptors?: Interceptor[];
}

/** createShakerTransport builds a Connect transport to a Shaker server that carries the API key. */
export function createShakerTransport(options: ShakerClientOptions = {}): Transport {
  const baseUrl = (options.baseUrl ?? process.env.SHAKER_URL ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
  const apiKey = options.apiKey ?? process.env.SHAKER_API_KEY;
  const auth: Interceptor = (next) => (req) => {
    if (apiKey) req.header.set("authorization", `Bearer ${apiKey}`);
    return next(req);
  };
  const interceptors = [auth, ...(options.interceptors ?? [])];
  switch (options.protocol ?? "connect") {
    case "grpc":
      return createGrpcTransport({ baseUrl, interceptors });
    case "grpc-web":
      return createGrpcWebTransport({ baseUrl, httpVersion: options.httpVersion ?? "1.1", interceptors });
    case "connect":
      return createConnectTransport({ baseUrl, httpVersion: options.httpVersion ?? "1.1", interceptors });
    default:
      throw new Error(`protocol must be "connect", "grpc" or "grpc-web", not ${JSON.stringify(options.protocol)}`);
  }
}

/** createShakerClients builds a client of every service on one transport. */
export function createShakerClients(options: ShakerClientOptions = {}): Clients {
  return createClients(createShakerTransport(options));
}

/** createRegistryClient builds a Registry client: workflows, versions, accessories, API keys. */
export function createRegistryClient(options: ShakerClientOptions = {}): Client<typeof RegistryService> {
  return createClient(RegistryService, createShakerTransport(options));
}

/** createExecutorClient builds an Executor client: runs and their records. */
export function createExecutorClient(options: ShakerClientOptions = {}): Client<typeof ExecutorService> {
  return createClient(ExecutorService, createShakerTransport(options));
}

/** createModelProxyClient builds a ModelProxy client: model calls and their records. */
export function createModelProxyClient(options: ShakerClientOptions = {}): Client<typeof ModelProxyService> {
  return createClient(ModelProxyService, createShakerTransport(options));
}

/** createDatastoreClient builds a Datastore client: record stores and search. */
export function createDatastoreClient(options: ShakerClientOptions = {}): Client<typeof DatastoreService> {
  return createClient(DatastoreService, createShakerTransport(options));
}
