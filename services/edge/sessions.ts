import type { JsonObject } from "@bufbuild/protobuf";
import type { Clients } from "../shared/clients.js";
import { msOf } from "../shared/json.js";
import { callerHeaders, HttpError, type Req, type Res, sendJson } from "./http.js";
import { modelCallJson } from "./models.js";
import type { EdgeRouter } from "./router.js";
import { runJson } from "./runs.js";

/** The most runs and model calls one session view gathers. */
const maxItems = 5000;

/**
 * addSessionRoutes registers GET /v1/sessions/{id}: every run of the session (Executor.ListRuns) and
 * every model call (ModelProxy.ListCalls), merged in time order, oldest first.
 */
export function addSessionRoutes(router: EdgeRouter, clients: Clients): void {
  router.add("GET", "/v1/sessions/:id", async (req: Req, res: Res, params) => {
    const headers = callerHeaders(req);
    const sessionId = params.id;
    const items: { type: "run" | "model_call"; time: number; data: JsonObject }[] = [];
    let runs = 0;
    for (let offset = 0; runs < maxItems; offset += 100) {
      const page = await clients.executor.listRuns({ sessionId, offset, limit: 100 }, { headers });
      for (const run of page.runs) {
        items.push({ type: "run", time: msOf(run.createdAt), data: runJson(run) });
      }
      runs += page.runs.length;
      if (page.runs.length < 100) break;
    }
    let calls = 0;
    for (let offset = 0; calls < maxItems; offset += 1000) {
      const page = await clients.modelproxy.listCalls({ sessionId, offset, limit: 1000 }, { headers });
      for (const call of page.calls) items.push({ type: "model_call", time: msOf(call.createdAt), data: modelCallJson(call) });
      calls += page.calls.length;
      if (page.calls.length < 1000) break;
    }
    if (items.length === 0) throw new HttpError(404, `no runs or model calls in session '${sessionId}'`, null, "not_found");
    // Stable: a run and the calls it made in the same millisecond keep run first.
    items.sort((a, b) => a.time - b.time || (a.type === b.type ? 0 : a.type === "run" ? -1 : 1));
    sendJson(res, 200, {
      data: {
        session_id: sessionId,
        runs,
        model_calls: calls,
        items: items.map((i) => ({ type: i.type, time: new Date(i.time).toISOString(), ...i.data })),
      },
    });
  });
}
