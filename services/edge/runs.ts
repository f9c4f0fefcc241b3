import { toJson, type JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { RunSchema, RunStatus, type Run } from "../../gen/shaker/executor/v1/executor_pb.js";
import { ModelCallSchema, type ModelCall } from "../../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import type { Clients } from "../shared/clients.js";
import { callerHeaders, HttpError, sendJson } from "./http.js";
import type { EdgeRouter } from "./router.js";

const statusByName: Record<string, RunStatus> = {
  queued: RunStatus.QUEUED,
  running: RunStatus.RUNNING,
  succeeded: RunStatus.SUCCEEDED,
  failed: RunStatus.FAILED,
  timed_out: RunStatus.TIMED_OUT,
  cancelled: RunStatus.CANCELLED,
};

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

/** callJson is a model call record as REST shows it. */
export function callJson(call: ModelCall): JsonObject {
  return toJson(ModelCallSchema, call, { useProtoFieldName: true, alwaysEmitImplicit: true }) as JsonObject;
}

function intParam(url: URL, name: string, max: number): number {
  const raw = url.searchParams.get(name);
  if (raw === null || raw === "") return 0;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > max) {
    throw new HttpError(400, `query parameter '${name}' must be an integer from 0 to ${max}`, name, "invalid_value");
  }
  return n;
}

/**
 * modelCallsOf lists the model calls of a run or session. A ModelProxy that does not record calls
 * (Unimplemented) yields none rather than failing the whole answer.
 */
export async function modelCallsOf(clients: Clients, filter: { runId?: string; sessionId?: string }, headers: Record<string, string>): Promise<ModelCall[]> {
  try {
    const resp = await clients.modelproxy.listCalls({ ...filter, limit: 1000 }, { headers });
    return resp.calls;
  } catch (e) {
    if (ConnectError.from(e).code === Code.Unimplemented) return [];
    throw e;
  }
}

/** addRunRoutes registers GET /v1/runs, GET /v1/runs/{id} and POST /v1/runs/{id}/cancel. */
export function addRunRoutes(router: EdgeRouter, clients: Clients): void {
  router
    .add("GET", "/v1/runs", async (req, res, _p, url) => {
      const headers = callerHeaders(req);
      const statusName = url.searchParams.get("status") ?? "";
      if (statusName && !(statusName in statusByName)) {
        throw new HttpError(400, `query parameter 'status' must be one of ${Object.keys(statusByName).join(", ")}`, "status", "invalid_value");
      }
      const offset = intParam(url, "offset", 2 ** 31 - 1);
      const limit = intParam(url, "limit", 100);
      const resp = await clients.executor.listRuns(
        {
          workflowRefName: url.searchParams.get("workflow") ?? "",
          sessionId: url.searchParams.get("session_id") ?? "",
          status: statusName ? statusByName[statusName] : RunStatus.UNSPECIFIED,
          offset,
          limit,
        },
        { headers },
      );
      sendJson(res, 200, { data: resp.runs.map(runJson), offset, limit: limit || 20 });
    })
    .add("GET", "/v1/runs/:id", async (req, res, params) => {
      const headers = callerHeaders(req);
      const resp = await clients.executor.getRun({ runId: params.id }, { headers });
      const calls = await modelCallsOf(clients, { runId: params.id }, headers);
      sendJson(res, 200, { data: { ...runJson(resp.run!), model_calls: calls.map(callJson) } });
    })
    .add("POST", "/v1/runs/:id/cancel", async (req, res, params) => {
      const resp = await clients.executor.cancelRun({ runId: params.id }, { headers: callerHeaders(req) });
      sendJson(res, 200, { data: { run_id: params.id, cancelled: resp.cancelled } });
    });
}
