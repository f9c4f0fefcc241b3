import type { DescMessage, DescMethodServerStreaming, DescService, MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, type Client, createClient, type StreamResponse, type Transport } from "@connectrpc/connect";
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
    registry: serviceClient(RegistryService, of("registry")),
    executor: serviceClient(ExecutorService, of("executor")),
    modelproxy: serviceClient(ModelProxyService, of("modelproxy")),
    datastore: serviceClient(DatastoreService, of("datastore")),
    cluster: serviceClient(ClusterService, of("registry")),
  };
}

/**
 * serviceClient is Connect's createClient with server-streaming methods of its own, which behave
 * as Connect's do. Connect's make a generator function per call (for the call and for its one
 * request), and such a generator kept its whole call alive through V8's young collections
 * (docs/architecture.md, Transports): 4-8 ms pauses, a stream's p99 through the edge. These
 * generators are declared once.
 */
function serviceClient<S extends DescService>(service: S, transport: Transport): Client<S> {
  const client = createClient(service, transport) as Record<string, unknown>;
  for (const m of service.methods) {
    if (m.methodKind !== "server_streaming") continue;
    const method = m as DescMethodServerStreaming;
    client[method.localName] = (input: MessageInitShape<DescMessage>, options?: CallOptions) => {
      const it = serverStream(
        transport.stream(method, options?.signal, options?.timeoutMs, options?.headers, only(input), options?.contextValues),
        options,
      );
      // As Connect's: an iterable without throw or return.
      return { [Symbol.asyncIterator]: () => ({ next: () => it.next() }) };
    };
  }
  return client as Client<S>;
}

/** only is a stream of one request. */
async function* only<T>(input: T): AsyncGenerator<T> {
  yield input;
}

/** serverStream is a server stream's messages, as Connect's client hands them out (headers and trailers to their callbacks). */
async function* serverStream(response: Promise<StreamResponse<DescMessage, DescMessage>>, options?: CallOptions): AsyncGenerator<unknown> {
  const r = await response;
  options?.onHeader?.(r.header);
  yield* r.message;
  options?.onTrailer?.(r.trailer);
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
