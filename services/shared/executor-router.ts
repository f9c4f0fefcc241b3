import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ContextValues, createContextKey, type Transport } from "@connectrpc/connect";
import type { Node } from "../../gen/shaker/cluster/v1/cluster_pb.js";
import { ExecutorService, GetRunRequestSchema } from "../../gen/shaker/executor/v1/executor_pb.js";

// Which executor an Executor RPC goes to, when a Shaker has several (they share one PostgreSQL
// database, so any of them reads every run record).
//
// - A run starts on the live executor with the fewest runs in flight: as of the cluster's latest
//   heartbeats, plus the runs this process sent each executor since (so a burst between two
//   heartbeats spreads instead of piling on the one that looked idlest).
// - A call about one run in flight (cancel, watch, the liveness check) goes to the executor that
//   runs it: the caller names it (ownerKey) when it knows, else the run's record names it.
// - Reading records (GetRun, ListRuns) goes to any live executor.
// With no live executor listed (before the first heartbeat, or on a single node), calls go to the
// fallback: this process's own executor, or SHAKER_EXECUTOR_URL.

/** ownerKey names the executor a call is for, when its caller knows it (a run token says it). */
export const ownerKey = createContextKey<string | undefined>(undefined, { description: "executor that owns the run" });

/** Methods that start a run: sent to the least loaded executor. */
const startMethods = new Set(["run", "runStream", "startRun"]);
/** Methods about one run in flight: sent to the executor that runs it. */
const ownerMethods = new Set(["cancelRun", "watchRun", "checkRun"]);

/** Options of executorRouter. */
export interface ExecutorRouterOptions {
  /** nodes are the cluster's nodes as of the latest heartbeat. */
  nodes: () => Node[];
  /** transportFor reaches an executor: in-process for this process's own (by its id), else by URL. */
  transportFor: (node: Node) => Transport;
  /** fallback serves calls while no live executor is listed; undefined refuses them (Unavailable). */
  fallback: Transport | undefined;
}

/** executorRouter is a Transport for the Executor's client that picks an executor per call. */
export function executorRouter(options: ExecutorRouterOptions): Transport {
  // Runs sent to each executor since the heartbeat its load was read from.
  const sent = new Map<string, { since: bigint; count: number }>();

  function liveExecutors(): Node[] {
    return options.nodes().filter((n) => n.live && n.services.includes("executor") && n.capacity > 0);
  }
  function load(n: Node): number {
    const s = sent.get(n.id);
    const beat = n.lastHeartbeat?.seconds ?? 0n;
    return n.runsInFlight + (s && s.since === beat ? s.count : 0);
  }
  function leastLoaded(): Node | undefined {
    let best: Node | undefined;
    for (const n of liveExecutors()) if (!best || load(n) / n.capacity < load(best) / best.capacity) best = n;
    return best;
  }
  function counted(n: Node): Node {
    const beat = n.lastHeartbeat?.seconds ?? 0n;
    const s = sent.get(n.id);
    sent.set(n.id, { since: beat, count: s && s.since === beat ? s.count + 1 : 1 });
    return n;
  }
  function fallback(): Transport {
    if (options.fallback) return options.fallback;
    throw new ConnectError("no executor is live in this Shaker: start one (shaker serve --services executor)", Code.Unavailable);
  }
  /**
   * ownerOf is the executor that runs a run: the one the caller named, else the one its record
   * names (read with the caller's own credentials, so a caller learns nothing of another account's runs).
   */
  async function ownerOf(
    runId: string,
    signal: AbortSignal | undefined,
    header: HeadersInit | undefined,
    contextValues: ContextValues | undefined,
  ) {
    const named = contextValues?.get(ownerKey);
    if (named) return liveExecutors().find((n) => n.id === named);
    if (!runId || liveExecutors().length < 2) return undefined;
    const resp = await options
      .transportFor(leastLoaded()!)
      .unary(ExecutorService.method.getRun, signal, 10_000, header, create(GetRunRequestSchema, { runId }), contextValues)
      .catch(() => undefined);
    const executor = resp?.message.run?.executor;
    return executor ? liveExecutors().find((n) => n.id === executor) : undefined;
  }
  /** pick chooses the executor for a call of `method` about `runId` (empty when it names no run). */
  async function pick(
    method: string,
    runId: string,
    signal: AbortSignal | undefined,
    header: HeadersInit | undefined,
    contextValues: ContextValues | undefined,
  ): Promise<Transport> {
    if (liveExecutors().length === 0) return fallback();
    if (ownerMethods.has(method)) {
      const owner = await ownerOf(runId, signal, header, contextValues);
      if (owner) return options.transportFor(owner);
      // The owner is unknown or dead: any executor answers from the shared records (a dead one's
      // runs are being taken over; the liveness check then says "not live").
    }
    const node = leastLoaded()!;
    return options.transportFor(startMethods.has(method) ? counted(node) : node);
  }
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      const transport = await pick(method.localName, runIdOf(input), signal, header, contextValues);
      return transport.unary(method, signal, timeoutMs, header, input, contextValues);
    },
    async stream(method, signal, timeoutMs, header, input, contextValues) {
      // A server stream's request is its one message: read it to learn the run it is about.
      const messages: typeof input extends AsyncIterable<infer M> ? M[] : never = [];
      for await (const m of input) messages.push(m);
      const transport = await pick(method.localName, runIdOf(messages[0]), signal, header, contextValues);
      return transport.stream(method, signal, timeoutMs, header, iterate(messages), contextValues);
    },
  };
}

function runIdOf(message: unknown): string {
  const runId = (message as { runId?: unknown } | undefined)?.runId;
  return typeof runId === "string" ? runId : "";
}

async function* iterate<T>(items: T[]): AsyncIterable<T> {
  yield* items;
}
