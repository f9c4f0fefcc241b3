import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import { asc, eq, lt } from "drizzle-orm";
import { ClusterService, type Node, NodeSchema } from "../../gen/shaker/cluster/v1/cluster_pb.js";
import { type Auth, type Identity, requireAdmin } from "../shared/auth.js";
import { serviceNames } from "../shared/config.js";
import type { ServiceDatabase } from "../shared/db.js";
import { invalidArgument } from "../shared/errors.js";
import type * as schema from "./schema.js";

// The membership of one Shaker. Every process (a node) heartbeats here; a node silent for
// deadAfterMs is dead: edges stop sending it runs and a live executor takes over its runs in flight
// (services/executor/takeover.ts). Kept in the Registry's tables, so on PostgreSQL every Registry
// instance answers the same, and on SQLite the one Registry does.

/** NodeRow is one node's row. */
export type NodeRow = typeof schema.nodes.$inferSelect;

/** A node silent for an hour is forgotten (its row deleted) on the next heartbeat of any node. */
const forgetAfterMs = 60 * 60 * 1000;

/** ClusterStore holds the membership queries, on the Registry's database. */
export type ClusterStore = ReturnType<typeof createClusterStore>;

/** createClusterStore runs the membership's queries on the Registry's open database. */
export function createClusterStore(db: ServiceDatabase<typeof schema>) {
  const { orm } = db;
  const { nodes } = db.tables;
  return {
    /** beat records a node alive at `now` (its first beat inserts it) and forgets long-silent ones. */
    async beat(row: NodeRow): Promise<void> {
      const { id, ...fields } = row;
      await orm.insert(nodes).values(row).onConflictDoUpdate({ target: nodes.id, set: fields });
      await orm.delete(nodes).where(lt(nodes.lastHeartbeat, row.lastHeartbeat - forgetAfterMs));
    },
    /** all lists every node, oldest first. */
    all(): Promise<NodeRow[]> {
      return orm.select().from(nodes).orderBy(asc(nodes.startedAt), asc(nodes.id));
    },
    /** leave forgets a node. */
    async leave(id: string): Promise<void> {
      await orm.delete(nodes).where(eq(nodes.id, id));
    },
  };
}

/** Options of createClusterService. */
export interface ClusterServiceOptions {
  store: ClusterStore;
  auth: Auth;
  /** deadAfterMs is how long a node may stay silent before it counts as dead. */
  deadAfterMs: number;
}

/** createClusterService serves the ClusterService on the Registry's database. */
export function createClusterService(options: ClusterServiceOptions) {
  const { store, auth, deadAfterMs } = options;
  const deadAfterSeconds = Math.ceil(deadAfterMs / 1000);

  function requireService(identity: Identity, method: string): void {
    if (identity.kind !== "service") throw new ConnectError(`${method} is for the services only`, Code.PermissionDenied);
  }
  async function listed() {
    const now = Date.now();
    return (await store.all()).map((row) => nodeMessage(row, now - row.lastHeartbeat <= deadAfterMs));
  }

  const impl: ServiceImpl<typeof ClusterService> = {
    async heartbeat(req, ctx) {
      requireService(await auth.identify(ctx.requestHeader), "Heartbeat");
      const node = req.node;
      if (!node?.id) throw invalidArgument("'node.id' is required", "node.id");
      if (node.id.length > 200) throw invalidArgument("'node.id' is at most 200 characters", "node.id");
      const unknown = node.services.filter((s) => !(serviceNames as readonly string[]).includes(s));
      if (unknown.length > 0) throw invalidArgument(`'node.services' has unknown services: ${unknown.join(", ")}`, "node.services");
      if (node.services.includes("executor") && !/^https?:\/\//.test(node.url)) {
        throw invalidArgument("an executor's 'node.url' must be an http:// or https:// URL", "node.url");
      }
      const now = Date.now();
      await store.beat({
        id: node.id,
        services: node.services,
        url: node.url,
        capacity: Math.max(0, node.capacity),
        runsInFlight: Math.max(0, node.runsInFlight),
        startedAt: node.startedAt ? timestampDate(node.startedAt).getTime() : now,
        lastHeartbeat: now,
      });
      return { nodes: await listed(), deadAfterSeconds };
    },
    async listNodes(_req, ctx) {
      requireAdmin(await auth.identify(ctx.requestHeader), "list the cluster's nodes");
      return { nodes: await listed(), deadAfterSeconds };
    },
    async leave(req, ctx) {
      requireService(await auth.identify(ctx.requestHeader), "Leave");
      if (!req.id) throw invalidArgument("'id' is required", "id");
      await store.leave(req.id);
      return {};
    },
  };
  return {
    impl,
    routes: (router: ConnectRouter) => router.service(ClusterService, impl),
  };
}

function nodeMessage(row: NodeRow, live: boolean): Node {
  const init: MessageInitShape<typeof NodeSchema> = {
    id: row.id,
    services: row.services,
    url: row.url,
    capacity: row.capacity,
    runsInFlight: row.runsInFlight,
    startedAt: timestampFromMs(row.startedAt),
    lastHeartbeat: timestampFromMs(row.lastHeartbeat),
    live,
  };
  return create(NodeSchema, init);
}
