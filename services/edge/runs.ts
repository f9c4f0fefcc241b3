import { type JsonObject, toJson } from "@bufbuild/protobuf";
import {
  EmittedValueSchema,
  LogEntrySchema,
  type Run,
  RunResultSchema,
  RunSchema,
  RunStatus,
} from "../../gen/shaker/executor/v1/executor_pb.js";
import { runPages, runStatuses } from "../executor/rules.js";
import { callPage } from "../modelproxy/rules.js";
import type { Clients } from "../shared/clients.js";
import { callerHeaders, disconnectSignal, HttpError, openSse, queryInt, sendJson, toErrorBody } from "./http.js";
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

const restJson = { useProtoFieldName: true, alwaysEmitImplicit: true } as const;

/**
 * addRunRoutes registers GET /v1/runs, GET /v1/runs/{id}, GET /v1/runs/{id}/events and
 * POST /v1/runs/{id}/cancel.
 */
export function addRunRoutes(router: EdgeRouter, clients: Clients, keepAliveMs: number): void {
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
    .add("GET", "/v1/runs/:id/events", async (req, res, params, url) => {
      // The run's events as Server-Sent Events, from the start or after Last-Event-ID (or ?after=),
      // then live until it ends: how a client that lost its stream rejoins its run.
      const headers = callerHeaders(req);
      const lastEventId = req.headers["last-event-id"];
      const after = url.searchParams.get("after") ?? (typeof lastEventId === "string" ? lastEventId : "");
      const signal = disconnectSignal(res);
      const events = clients.executor.watchRun({ runId: params.id, after }, { headers, signal })[Symbol.asyncIterator]();
      // Every error known before the first event (no such run, a bad cursor) is answered with its status.
      const first = await events.next();
      const sse = openSse(req, res, keepAliveMs, { "x-request-id": params.id });
      try {
        for (let next = first; !next.done; next = await events.next()) {
          const { eventId, event } = next.value.update!;
          if (event.case === "emitted") {
            const data = toJson(EmittedValueSchema, event.value, restJson);
            await sse.write(`id: ${eventId}\nevent: emitted\ndata: ${JSON.stringify(data)}\n\n`);
          } else if (event.case === "log") {
            const data = toJson(LogEntrySchema, event.value, restJson) as Record<string, unknown>;
            data.level = enumName(data.level, "LOG_LEVEL_");
            await sse.write(`id: ${eventId}\nevent: log\ndata: ${JSON.stringify(data)}\n\n`);
          } else if (event.case === "result") {
            const data = { status: "succeeded", ...(toJson(RunResultSchema, event.value, restJson) as JsonObject) };
            await sse.write(`event: end\ndata: ${JSON.stringify(data)}\n\n`);
          }
        }
      } catch (err) {
        if (!signal.aborted) {
          const { status, body } = toErrorBody(err, params.id);
          await sse.write(`event: end\ndata: ${JSON.stringify({ status: statusOfHttp(status), run_id: params.id, ...body })}\n\n`);
        }
      } finally {
        sse.close();
      }
    })
    .add("POST", "/v1/runs/:id/cancel", async (req, res, params) => {
      const resp = await clients.executor.cancelRun({ runId: params.id }, { headers: callerHeaders(req) });
      sendJson(res, 200, { data: { run_id: params.id, cancelled: resp.cancelled } });
    });
}

/** statusOfHttp is the run status an error answer stands for. */
function statusOfHttp(status: number): string {
  return status === 408 ? "timed_out" : status === 499 ? "cancelled" : "failed";
}
