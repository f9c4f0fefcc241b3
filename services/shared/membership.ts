import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { type ClusterService, type Node, NodeSchema } from "../../gen/shaker/cluster/v1/cluster_pb.js";

// A node's side of the cluster's membership (services/registry/cluster.ts): every process of a
// Shaker says it is alive every few seconds, with what it runs and its executor's load, and keeps
// the answer, the list of every node, for the edge's choice of executor and the executors' takeover
// of dead peers.

/** What a node says of itself at each heartbeat. */
export interface NodeSelf {
  id: string;
  services: string[];
  url: string;
  capacity: number;
  /** runsInFlight is read at each heartbeat. */
  runsInFlight: () => number;
}

/** Options of startMembership. */
export interface MembershipOptions {
  cluster: Client<typeof ClusterService>;
  /** headers authenticate the heartbeats as a service. */
  headers: Record<string, string>;
  self: NodeSelf;
  /** intervalMs is the time between heartbeats. */
  intervalMs: number;
  /** onNodes hears every heartbeat's answer (an executor looks there for dead peers). */
  onNodes?: (nodes: Node[]) => void;
  /** warn reports a heartbeat that failed (once, until one succeeds again). */
  warn?: (message: string) => void;
}

/** Membership is a node's running heartbeat and the latest list of nodes it got back. */
export interface Membership {
  /** nodes are the nodes as of the latest successful heartbeat (empty before the first). */
  nodes(): Node[];
  /** beat heartbeats now (also done every intervalMs); it never throws. */
  beat(): Promise<void>;
  /** close stops the heartbeats and leaves the cluster, so no edge sends this node runs meanwhile. */
  close(): Promise<void>;
}

/** startMembership heartbeats at once and then every intervalMs, until closed. */
export function startMembership(options: MembershipOptions): Membership {
  const { cluster, headers, self } = options;
  const startedAt = Date.now();
  let nodes: Node[] = [];
  let failing = false;
  let closed = false;
  async function beat(): Promise<void> {
    if (closed) return;
    try {
      const resp = await cluster.heartbeat(
        {
          node: create(NodeSchema, {
            id: self.id,
            services: self.services,
            url: self.url,
            capacity: self.capacity,
            runsInFlight: self.runsInFlight(),
            startedAt: timestampFromMs(startedAt),
          }),
        },
        { headers, timeoutMs: options.intervalMs * 2 },
      );
      nodes = resp.nodes;
      failing = false;
      options.onNodes?.(nodes);
    } catch (e) {
      if (!failing) options.warn?.(`heartbeat of node ${self.id} failed: ${(e as Error).message}`);
      failing = true;
    }
  }
  const timer = setInterval(() => void beat(), options.intervalMs);
  timer.unref();
  void beat();
  return {
    nodes: () => nodes,
    beat,
    async close() {
      closed = true;
      clearInterval(timer);
      await cluster.leave({ id: self.id }, { headers, timeoutMs: 2000 }).catch(() => undefined);
    },
  };
}
