import { type JsonObject, type MessageInitShape, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type CallContextSchema, type ModelCall, ModelCallSchema } from "../../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import type { Clients } from "../shared/clients.js";
import { errorMetadata } from "../shared/errors.js";
import {
  callerHeaders,
  disconnectSignal,
  field,
  HttpError,
  type Req,
  type Res,
  readJson,
  sendJson,
  sseHeaders,
  toErrorBody,
  writeDrained,
} from "./http.js";
import type { EdgeRouter } from "./router.js";

/** upstreamError turns an upstream model's failure into 502/504; other errors pass unchanged. */
export function upstreamError(err: unknown): unknown {
  if (err instanceof HttpError) return err;
  const ce = ConnectError.from(err);
  const status = Number(ce.metadata.get(errorMetadata.upstreamStatus));
  if (status === 502 || status === 504)
    return new HttpError(status, ce.rawMessage, null, status === 504 ? "upstream_timeout" : "upstream_error");
  return err;
}

/** Fields of a proxied request that are Shaker's own, never sent upstream. */
export function contextOf(body: Record<string, unknown>): { context: MessageInitShape<typeof CallContextSchema>; openaiBody: JsonObject } {
  const sessionId = field.string(body, "session_id") ?? "";
  const intent = field.string(body, "intent") ?? field.string(body, "action_type") ?? "";
  const application = field.string(body, "application") ?? field.string(body, "application_ref_name") ?? "";
  const secrets = field.stringMap(body, "secrets") ?? {};
  const {
    session_id: _s,
    secrets: _x,
    metadata: _m,
    intent: _i,
    action_type: _a,
    application: _p,
    application_ref_name: _r,
    ...openaiBody
  } = body;
  // Secret values sent with a plain model call are only blanked out of the call's record.
  const context: MessageInitShape<typeof CallContextSchema> = {
    sessionId,
    intent,
    application,
    redactValues: Object.values(secrets).filter(Boolean),
  };
  return { context, openaiBody: openaiBody as JsonObject };
}

/** usageAsked tells whether an OpenAI streaming request asked for the usage chunk (`stream_options.include_usage`). */
function usageAsked(body: Record<string, unknown>): boolean {
  const options = body.stream_options;
  return typeof options === "object" && options !== null && (options as Record<string, unknown>).include_usage === true;
}

/** isUsageOnly tells the usage chunk that ends a stream (its choices empty) from the others. */
function isUsageOnly(chunk: JsonObject | undefined): boolean {
  return Array.isArray(chunk?.choices) && chunk.choices.length === 0 && chunk.usage !== undefined;
}

/** proxyModelCall answers POST /v1/chat/completions for a model that is not a workflow, through the ModelProxy. */
export async function proxyModelCall(
  clients: Clients,
  res: Res,
  body: Record<string, unknown>,
  headers: Record<string, string>,
  stream: boolean,
): Promise<void> {
  if (body.messages === undefined) throw new HttpError(400, "'messages' is required", "messages", "missing_field");
  field.objectArray(body, "messages");
  const { context, openaiBody } = contextOf(body);
  const signal = disconnectSignal(res);
  try {
    if (!stream) {
      const resp = await clients.modelproxy.chatCompletion({ body: openaiBody, context }, { headers, signal });
      sendJson(res, 200, resp.completion ?? {}, { "x-request-id": resp.callId });
      return;
    }
    const events = clients.modelproxy.chatCompletionStream({ body: openaiBody, context }, { headers, signal })[Symbol.asyncIterator]();
    // Every error known before the first chunk (auth, bad input, upstream down) is answered with its status.
    const first = await events.next();
    res.writeHead(200, {
      ...sseHeaders,
      ...(first.done ? {} : { "x-request-id": first.value.callId }),
    });
    try {
      const wantsUsage = usageAsked(body);
      for (let next = first; !next.done; next = await events.next()) {
        // As OpenAI does: the usage-only chunk (no choices) only for a caller that asked for it.
        if (!wantsUsage && isUsageOnly(next.value.chunk)) continue;
        // Each chunk leaves as it arrives; only a slow reader makes us wait (never an unbounded buffer).
        await writeDrained(res, `data: ${JSON.stringify(next.value.chunk ?? {})}\n\n`);
      }
      res.write("data: [DONE]\n\n");
    } catch (err) {
      if (!signal.aborted) res.write(`data: ${JSON.stringify(toErrorBody(upstreamError(err)).body)}\n\n`);
    } finally {
      res.end();
    }
  } catch (err) {
    throw upstreamError(err);
  }
}

/** Options of the model routes. */
export interface ModelRoutesOptions {
  clients: Clients;
  maxBodyBytes: number;
  /** maxJsonDepth bounds how deeply a JSON body nests; default defaultMaxJsonDepth (64). */
  maxJsonDepth?: number;
}

/** addModelRoutes registers /v1/embeddings, /v1/models and /v1/metrics. */
export function addModelRoutes(router: EdgeRouter, options: ModelRoutesOptions): void {
  const { clients } = options;

  router.add("POST", "/v1/embeddings", async (req: Req, res: Res) => {
    const headers = callerHeaders(req);
    const body = await readJson(req, options.maxBodyBytes, options.maxJsonDepth);
    const input = body.input;
    const ok = typeof input === "string" || (Array.isArray(input) && input.length > 0);
    if (!ok)
      throw new HttpError(
        400,
        "'input' is required: a string or a non-empty array",
        "input",
        input === undefined ? "missing_field" : "invalid_type",
      );
    field.string(body, "model");
    const { context, openaiBody } = contextOf(body);
    try {
      const resp = await clients.modelproxy.embeddings({ body: openaiBody, context }, { headers });
      sendJson(res, 200, resp.response ?? {}, { "x-request-id": resp.callId });
    } catch (err) {
      throw upstreamError(err);
    }
  });

  const workflowModel = (w: { workflowRefName: string; createdAt?: { seconds: bigint } }) => ({
    id: `workflow:${w.workflowRefName}`,
    object: "model",
    created: w.createdAt ? Number(w.createdAt.seconds) : 0,
    owned_by: "workflow",
  });
  const proxiedModel = (m: { id: string; provider: string; kind: string }) => ({
    id: m.id,
    object: "model",
    created: Math.floor(Date.now() / 1000),
    owned_by: m.provider,
    kind: m.kind,
  });

  router.add("GET", "/v1/models", async (req: Req, res: Res) => {
    const headers = callerHeaders(req);
    const models = await clients.modelproxy.listModels({}, { headers });
    const workflows: ReturnType<typeof workflowModel>[] = [];
    for (let offset = 0; ; offset += 100) {
      const page = await clients.registry.listWorkflows({ offset, limit: 100 }, { headers });
      workflows.push(...page.workflows.map(workflowModel));
      if (page.workflows.length < 100 || workflows.length >= page.total) break;
    }
    sendJson(res, 200, { object: "list", data: [...workflows, ...models.models.map(proxiedModel)] });
  });

  // client.models.retrieve(id): one model of the list, or OpenAI's 404 for a name that is not there.
  router.add("GET", "/v1/models/:id", async (req: Req, res: Res, params: Record<string, string>) => {
    const headers = callerHeaders(req);
    const id = params.id;
    const missing = () => new HttpError(404, `The model '${id}' does not exist`, "model", "model_not_found");
    if (id.startsWith("workflow:")) {
      try {
        const { workflow } = await clients.registry.getWorkflow({ workflowRefName: id.slice("workflow:".length) }, { headers });
        if (!workflow) throw missing();
        return sendJson(res, 200, workflowModel(workflow));
      } catch (e) {
        if (e instanceof HttpError) throw e;
        const code = ConnectError.from(e).code;
        if (code === Code.NotFound || code === Code.InvalidArgument) throw missing();
        throw e;
      }
    }
    const found = (await clients.modelproxy.listModels({}, { headers })).models.find((m) => m.id === id);
    if (!found) throw missing();
    sendJson(res, 200, proxiedModel(found));
  });

  router.add("GET", "/v1/metrics", async (req: Req, res: Res) => {
    const headers = callerHeaders(req);
    const m = await clients.modelproxy.getMetrics({}, { headers });
    sendJson(res, 200, {
      data: {
        modelproxy: {
          calls: m.calls,
          upstream_attempts: m.upstreamAttempts,
          calls_recorded: m.callsRecorded,
          calls_pending: m.callsPending,
          calls_dropped: m.callsDropped,
        },
      },
    });
  });
}

/** modelCallJson is a recorded model call in the REST shape (snake_case fields). */
export function modelCallJson(call: ModelCall): JsonObject {
  return toJson(ModelCallSchema, call, { useProtoFieldName: true, alwaysEmitImplicit: true }) as JsonObject;
}
