import { type JsonObject, toJson } from "@bufbuild/protobuf";
import { type Run, RunSchema, RunStatus } from "../../gen/shaker/executor/v1/executor_pb.js";
import { runPages, runStatuses } from "../executor/rules.js";
import { callPage } from "../modelproxy/rules.js";
import type { Clients } from "../shared/clients.js";
import { callerHeaders, HttpError, queryInt, sendJson } from "./http.js";
import { modelCallJson } from "./models.js";
import type { EdgeRouter } from "./router.js";

/** enumName turns "RUN_STATUS_TIMED_OUT" into "timed_out", the way REST callers spell it. */
function enumName(value: unknown, prefix: string): unknown {
  return typeof value === "string" && value.startsWith(prefix) ? value.slice(prefix.length).toLowerCase() : value;
}

/** runJson is a run record as REST shows it: snake_case fields, lower-case status and log levels. */
export function runJson(run: Run): JsonObject {
  const json = toJson(RunSchema, run, { useProtoFieldName: true, alwaysEmitImplicit: true }) as Record<string, any>;
  json.status = enumName(json.status, "RUN_STATUS_");
  for (const log of json.logs ?? []) log.level = enumName(log.level, "LOG_LEVEL_");
  return json;
}

/** addRunRoutes registers GET /v1/runs, GET /v1/runs/{id} and POST /v1/runs/{id}/cancel. */
export function addRunRoutes(router: EdgeRouter, clients: Clients): void {
  router
    .add("GET", "/v1/runs", async (req, res, _p, url) => {
      const headers = callerHeaders(req);
      const statusName = url.searchParams.get("status") ?? "";
      if (statusName && !(statusName in runStatuses)) {
        throw new HttpError(
          400,
          `query parameter 'status' must be one of ${Object.keys(runStatuses).join(", ")}`,
          "status",
          "invalid_value",
        );
      }
      const offset = queryInt(url, "offset", 2 ** 31 - 1);
      const limit = queryInt(url, "limit", runPages.maxLimit);
      const resp = await clients.executor.listRuns(
        {
          workflowRefName: url.searchParams.get("workflow") ?? "",
          sessionId: url.searchParams.get("session_id") ?? "",
          status: statusName ? runStatuses[statusName] : RunStatus.UNSPECIFIED,
          offset,
          limit,
        },
        { headers },
      );
      sendJson(res, 200, { data: resp.runs.map(runJson), offset, limit: limit || runPages.defaultLimit });
    })
    .add("GET", "/v1/runs/:id", async (req, res, params) => {
      const headers = callerHeaders(req);
      const resp = await clients.executor.getRun({ runId: params.id }, { headers });
      const { calls } = await clients.modelproxy.listCalls({ runId: params.id, limit: callPage.max }, { headers });
      sendJson(res, 200, { data: { ...runJson(resp.run!), model_calls: calls.map(modelCallJson) } });
    })
    .add("POST", "/v1/runs/:id/cancel", async (req, res, params) => {
      const resp = await clients.executor.cancelRun({ runId: params.id }, { headers: callerHeaders(req) });
      sendJson(res, 200, { data: { run_id: params.id, cancelled: resp.cancelled } });
    });
}
