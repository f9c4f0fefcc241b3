import { toJson } from "@bufbuild/protobuf";
import { NodeSchema } from "../../gen/shaker/cluster/v1/cluster_pb.js";
import type { Clients } from "../shared/clients.js";
import { callerHeaders, sendJson } from "./http.js";
import type { EdgeRouter } from "./router.js";

/**
 * addClusterRoutes registers GET /v1/cluster (admin keys): every node of this Shaker heard from in
 * the last hour, with its services, URL, last heartbeat, whether it is live and its executor's
 * capacity and runs in flight.
 */
export function addClusterRoutes(router: EdgeRouter, clients: Clients): void {
  router.add("GET", "/v1/cluster", async (req, res) => {
    const resp = await clients.cluster.listNodes({}, { headers: callerHeaders(req) });
    sendJson(res, 200, {
      object: "list",
      data: resp.nodes.map((n) => toJson(NodeSchema, n, { useProtoFieldName: true, alwaysEmitImplicit: true })),
      dead_after_seconds: resp.deadAfterSeconds,
    });
  });
}
