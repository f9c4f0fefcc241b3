import { create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ContextValues, createContextKey, type Transport } from "@connectrpc/connect";
import type { Node } from "../../gen/shaker/cluster/v1/cluster_pb.js";
import { ExecutorService, GetRunRequestSchema } from "../../gen/shaker/executor/v1/executor_pb.js";
import { mapErrors } from "./errors.js";

// Which executor an Executor RPC goes to, when a Shaker has several (they share one PostgreSQL
// database, so any of them reads every run record).
//
// - A run starts on this process's own executor when it runs one (no network hop, and nothing
//   depends on the cluster's view being fresh); otherwise on the live executor with the fewest
//   runs in flight for its capacity: as of the cluster's latest heartbeats, plus the runs this
//   process sent each executor since (so a burst between two heartbeats spreads instead of piling
//   on the one that looked idlest). When every live executor runs, from this process alone, as
//   many runs as its capacity, the start is refused here (ResourceExhausted: a 429), as each of
//   them would refuse it, without a round trip to one and its work before refusing.
// - A call about one run in flight (cancel, watch, the liveness check) goes to the executor that
//   runs it: the caller names it (ownerKey) when it knows, else the run's record names it.
// - Reading records (GetRun, ListRuns) goes to any live executor.
// - An executor that could not be reached is passed over until it heartbeats again: a killed one
//   stays listed as live until it has been silent for the cluster's dead-after time.
// With no live executor listed (before the first heartbeat), calls go to the fallback
// (SHAKER_EXECUTOR_URL), if any.

/** ownerKey names the executor a call is for, when its caller knows it (a run token says it). */
export const ownerKey = createContextKey<string | undefined>(undefined, { description: "executor that owns the run" });

/** runIdHeader is the metadata of an error a run ended with (services/executor/service.ts). */
const runIdHeader = "shaker-run-id";

/** Methods that start a run: sent to the least loaded executor. */
const startMethods = new Set(["run", "runStream", "startRun"]);
/** Methods about one run in flight: sent to the executor that runs it. */
const ownerMethods = new Set(["cancelRun", "watchRun", "checkRun"]);

/** What a call is picked by besides its method and run: its signal, headers and context values. */
type CallArgs = [AbortSignal | undefined, HeadersInit | undefined, ContextValues | undefined];

/** Options of executorRouter. */
export interface ExecutorRouterOptions {
  /** nodes are the cluster's nodes as of the latest heartbeat. */
  nodes: () => Node[];
  /** transportFor reaches another process's executor, at its URL. */
  transportFor: (node: Node) => Transport;
  /** local is this process's own executor, when it runs one (its id is known once it listens). */
  local?: { id: () => string; transport: Transport };
  /** fallback serves calls while no live executor is listed; undefined refuses them (Unavailable). */
  fallback: Transport | undefined;
}

/** executorRouter is a Transport for the Executor's client that picks an executor per call. */
export function executorRouter(options: ExecutorRouterOptions): Transport {
  const { local } = options;
  // Runs sent to each executor since the heartbeat its load was read from.
  const sent = new Map<string, { since: number; count: number }>();
  // Executors a call could not reach, and when: passed over until they heartbeat after that.
  const unreachable = new Map<string, number>();
  // The runs this process started on each executor that have not ended (their calls are not over).
  const started = new Map<string, number>();
  const beatOf = (n: Node) => (n.lastHeartbeat ? timestampMs(n.lastHeartbeat) : 0);

  /** reachable is false for an executor a call could not reach since its last heartbeat. */
  function reachable(n: Node): boolean {
    const failedAt = unreachable.get(n.id);
    return failedAt === undefined || beatOf(n) > failedAt;
  }
  function liveExecutors(): Node[] {
    return options.nodes().filter((n) => n.live && n.services.includes("executor") && n.capacity > 0 && reachable(n));
  }
  function load(n: Node): number {
    const s = sent.get(n.id);
    return n.runsInFlight + (s && s.since === beatOf(n) ? s.count : 0);
  }
  function leastLoaded(among = liveExecutors()): Node | undefined {
    let best: Node | undefined;
    for (const n of among) if (!best || load(n) / n.capacity < load(best) / best.capacity) best = n;
    return best;
  }
  /**
   * mine is how many runs a node surely runs: those this process started there and that have not
   * ended. Never more than its load as of its latest heartbeat plus what was sent it since: a count
   * over that missed an end, and is wrong only until the next heartbeat.
   */
  function mine(n: Node): number {
    return Math.min(started.get(n.id) ?? 0, load(n));
  }
  /** forStart is the executor a new run goes to, or a refusal when every live one is full of this process's runs. */
  function forStart(): Node | undefined {
    const live = liveExecutors();
    const room = live.filter((n) => mine(n) < n.capacity);
    if (live.length > 0 && room.length === 0) {
      throw new ConnectError(
        `every executor of this Shaker runs as many runs as it may (${live.map((n) => n.capacity).join(", ")}); try again shortly`,
        Code.ResourceExhausted,
      );
    }
    return leastLoaded(room);
  }
  /** counting is a node's transport that counts the runs started through it until their calls end. */
  function counting(n: Node, transport: Transport): Transport {
    const begin = () => {
      started.set(n.id, (started.get(n.id) ?? 0) + 1);
      let over = false;
      return () => {
        if (over) return;
        over = true;
        const left = (started.get(n.id) ?? 1) - 1;
        if (left > 0) started.set(n.id, left);
        else started.delete(n.id);
      };
    };
    return {
      async unary(...args) {
        const end = begin();
        try {
          return await transport.unary(...args);
        } finally {
          end();
        }
      },
      async stream(method, signal, ...rest) {
        const release = begin();
        // A caller that goes away ends it too, even if it never reads the stream's end.
        const end = () => {
          signal?.removeEventListener("abort", end);
          release();
        };
        signal?.addEventListener("abort", end, { once: true });
        try {
          const res = await transport.stream(method, signal, ...rest);
          return { ...res, message: untilOver(res.message, end) };
        } catch (e) {
          end();
          throw e;
        }
      },
    };
  }
  function counted(n: Node): Node {
    const s = sent.get(n.id);
    sent.set(n.id, { since: beatOf(n), count: s && s.since === beatOf(n) ? s.count + 1 : 1 });
    return n;
  }
  /**
   * reach is a node's transport. A call that cannot reach it, or that it stops answering (it died:
   * its streams end cancelled), marks it unreachable and fails Unavailable, which callers may retry
   * (an SDK's retry then attaches to the run once another executor took it over). A run's own end
   * (cancelled, say) carries its run id and passes as it is.
   */
  function reach(n: Node): Transport {
    if (local && n.id === local.id()) return local.transport;
    const transport = options.transportFor(n);
    /** lost is what a failed call to this node is: Unavailable when the node stopped answering. */
    const lost = (signal: AbortSignal | undefined) => (e: unknown) => {
      const error = ConnectError.from(e);
      if (signal?.aborted || error.metadata.get(runIdHeader) !== null) return error;
      if (error.code !== Code.Unavailable && error.code !== Code.Canceled) return error;
      unreachable.set(n.id, Date.now());
      return new ConnectError(`executor '${n.id}' stopped answering: ${error.rawMessage}`, Code.Unavailable);
    };
    return {
      unary: (method, signal, ...rest) =>
        transport.unary(method, signal, ...rest).catch((e) => {
          throw lost(signal)(e);
        }),
      async stream(method, signal, ...rest) {
        const res = await transport.stream(method, signal, ...rest).catch((e) => {
          throw lost(signal)(e);
        });
        return { ...res, message: mapErrors(res.message, lost(signal)) };
      },
    };
  }
  function anyExecutor(): Transport {
    if (local) return local.transport;
    const node = leastLoaded();
    if (node) return reach(node);
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
    const live = liveExecutors();
    const named = contextValues?.get(ownerKey);
    // Named by a run's token: asked even when its heartbeats are late (a busy executor still answers;
    // a dead one does not, and the call then goes to another, which says the run is not live).
    if (named) return options.nodes().find((n) => n.id === named && n.services.includes("executor") && reachable(n));
    if (!runId || live.length === 0 || (live.length === 1 && live[0].id === local?.id())) return undefined;
    const resp = await anyExecutor()
      .unary(ExecutorService.method.getRun, signal, 10_000, header, create(GetRunRequestSchema, { runId }), contextValues)
      .catch(() => undefined);
    const executor = resp?.message.run?.executor;
    return executor ? live.find((n) => n.id === executor) : undefined;
  }
  /** pick chooses the executor for a call of `method` about `runId` (empty when it names no run). */
  async function pick(method: string, runId: string, ...[signal, header, contextValues]: CallArgs): Promise<Transport> {
    if (ownerMethods.has(method)) {
      // The owner unknown or dead: any executor answers from the shared records (a dead one's runs
      // are being taken over; the liveness check then says "not live").
      const owner = await ownerOf(runId, signal, header, contextValues);
      return owner ? reach(owner) : anyExecutor();
    }
    if (startMethods.has(method) && !local) {
      const node = forStart();
      if (node) return counting(node, reach(counted(node)));
    }
    return anyExecutor();
  }
  /**
   * call makes a call on the executor picked for it. A call about a run whose executor cannot be
   * reached is made on another: that executor died (a restarted one comes back under a new id), and
   * the others act on its runs from their shared records.
   */
  async function call<T>(method: string, runId: string, args: CallArgs, make: (t: Transport) => Promise<T>): Promise<T> {
    const transport = await pick(method, runId, ...args);
    try {
      return await make(transport);
    } catch (e) {
      if (!ownerMethods.has(method) || ConnectError.from(e).code !== Code.Unavailable) throw e;
      const other = anyExecutor();
      if (other === transport) throw e;
      return make(other);
    }
  }
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) =>
      call(method.localName, runIdOf(input), [signal, header, contextValues], (t) =>
        t.unary(method, signal, timeoutMs, header, input, contextValues),
      ),
    async stream(method, signal, timeoutMs, header, input, contextValues) {
      // A server stream's request is its one message: read it to learn the run it is about.
      const messages: typeof input extends AsyncIterable<infer M> ? M[] : never = [];
      for await (const m of input) messages.push(m);
      return call(method.localName, runIdOf(messages[0]), [signal, header, contextValues], (t) =>
        t.stream(method, signal, timeoutMs, header, iterate(messages), contextValues),
      );
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

/** untilOver passes messages on and calls `over` once they end, fail, or their reader stops. */
async function* untilOver<T>(messages: AsyncIterable<T>, over: () => void): AsyncIterable<T> {
  try {
    yield* messages;
  } finally {
    over();
  }
}
