import { createHash } from "node:crypto";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { RunResult, RunStreamResponse } from "../../gen/shaker/executor/v1/executor_pb.js";
import { idempotencyKeyProblem, inputRequired } from "../executor/rules.js";
import type { Clients } from "../shared/clients.js";
import { fromValue, toValue } from "../shared/json.js";
import { namePattern } from "../shared/names.js";
import {
  callerHeaders,
  disconnectSignal,
  field,
  HttpError,
  openSse,
  type Req,
  type Res,
  readJson,
  sendError,
  sendJson,
  toErrorBody,
} from "./http.js";
import { proxyModelCall } from "./models.js";

const workflowModel = new RegExp(`^workflow:(${namePattern.source.slice(1, -1)})(?:@(\\d+\\.\\d+\\.\\d+))?$`);

/** Fields of the request that are the invocation's own; every other field is an inference param. */
const invocationFields = new Set(["model", "messages", "input", "session_id", "secrets", "metadata", "stream"]);

/** Options of the chat completions route. */
export interface ChatRouteOptions {
  clients: Clients;
  maxBodyBytes: number;
  /** keepAliveMs is the interval of `: keep-alive` comments on a quiet stream; default 15 s. */
  keepAliveMs?: number;
  /** maxJsonDepth bounds how deeply a JSON body nests; default defaultMaxJsonDepth (64). */
  maxJsonDepth?: number;
}

function completionId(runId: string): string {
  return `chatcmpl-${runId}`;
}

/** canonical is a JSON value's text with object keys sorted: the same for the same value however it was spelled. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/**
 * RetryFields are what tells a retry of a request from another one: its Idempotency-Key, the
 * hash of its body (with only the names of its secrets, so no secret value is ever hashed into a
 * record), and the SDK's own retry count (X-Stainless-Retry-Count).
 */
export function retryFields(req: Req, body: Record<string, unknown>): { idempotencyKey: string; requestHash: string; retryCount: number } {
  const key = req.headers["idempotency-key"];
  const idempotencyKey = typeof key === "string" ? key : "";
  if (key !== undefined) {
    const problem = idempotencyKeyProblem(idempotencyKey);
    if (problem) throw new HttpError(400, problem, "Idempotency-Key", "invalid_header");
  }
  const secrets = body.secrets;
  const hashed = secrets && typeof secrets === "object" ? { ...body, secrets: Object.keys(secrets).sort() } : body;
  const requestHash = createHash("sha256").update(canonical(hashed)).digest("base64url");
  const count = Number(req.headers["x-stainless-retry-count"]);
  return { idempotencyKey, requestHash, retryCount: Number.isSafeInteger(count) && count > 0 ? Math.min(count, 1000) : 0 };
}

function contentOf(value: JsonValue): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function usageOf(result: RunResult): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  return {
    prompt_tokens: result.usage?.promptTokens ?? 0,
    completion_tokens: result.usage?.completionTokens ?? 0,
    total_tokens: result.usage?.totalTokens ?? 0,
  };
}

/** createChatRoute answers POST /v1/chat/completions: workflows through the Executor, other models through the ModelProxy. */
export function createChatRoute(options: ChatRouteOptions) {
  const { clients } = options;
  const keepAliveMs = options.keepAliveMs ?? 15_000;

  return async function chatCompletions(req: Req, res: Res): Promise<void> {
    const headers = callerHeaders(req);
    const body = await readJson(req, options.maxBodyBytes, options.maxJsonDepth);
    const model = field.string(body, "model", true)!;
    const stream = field.boolean(body, "stream") ?? false;
    const match = workflowModel.exec(model);
    if (!match) {
      if (model.startsWith("workflow:")) {
        throw new HttpError(
          400,
          `'model' must be 'workflow:<ref>' or 'workflow:<ref>@<major.minor.patch>' with ref matching ${namePattern.source}, got ${JSON.stringify(model)}`,
          "model",
          "invalid_model",
        );
      }
      await proxyModelCall(clients, res, body, headers, stream);
      return;
    }
    const messages = field.objectArray(body, "messages");
    const hasInput = "input" in body && body.input !== undefined;
    if (!messages && !hasInput) {
      throw new HttpError(400, inputRequired, "messages", "missing_field");
    }
    const sessionId = field.string(body, "session_id");
    const secrets = field.stringMap(body, "secrets");
    const metadata = field.object(body, "metadata");
    const params: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(body)) if (!invocationFields.has(k)) params[k] = v;
    params.stream = stream;
    const invocation = {
      workflowRefName: match[1],
      version: match[2] ?? "",
      input: hasInput ? toValue(body.input) : undefined,
      hasInput,
      messages: (messages ?? []) as JsonObject[],
      secrets: secrets ?? {},
      metadata: (metadata ?? {}) as JsonObject,
      params: params as JsonObject,
      sessionId: sessionId ?? "",
      ...retryFields(req, body),
    };

    const signal = disconnectSignal(res);
    const events = clients.executor.runStream({ invocation }, { headers, signal })[Symbol.asyncIterator]();
    // Every error that can be known before the run starts arrives before the first message: answer it with its status.
    const first = await events.next();
    if (first.done || first.value.event.case !== "started") throw new HttpError(502, "the Executor ended the run before starting it");
    const started = first.value.event.value;
    // Every caller of the same run (a retry, a duplicate with its Idempotency-Key) gets the same answer.
    const created = Math.floor((started.createdAt ? timestampMs(started.createdAt) : Date.now()) / 1000);
    const id = completionId(started.runId);
    if (started.detached) {
      // An async workflow: the run goes on; its result is read at GET /v1/runs/{id}.
      sendJson(
        res,
        202,
        {
          id,
          object: "workflow.run",
          model,
          run_id: started.runId,
          session_id: started.sessionId,
          status: "running",
          result_url: `/v1/runs/${started.runId}`,
        },
        { "x-request-id": started.runId, location: `/v1/runs/${started.runId}` },
      );
      return;
    }

    if (!stream) {
      let result: RunResult | undefined;
      try {
        for (let next = await events.next(); !next.done; next = await events.next()) {
          if (next.value.event.case === "result") result = next.value.event.value;
        }
        if (!result) throw new HttpError(502, "the run ended without a result");
      } catch (err) {
        // The run started, so its record (and traceback) exists: the answer names it.
        sendError(res, err, started.runId);
        return;
      }
      const output = fromValue(result.output);
      sendJson(
        res,
        200,
        {
          id,
          object: "chat.completion",
          created,
          model,
          choices: [
            { index: 0, message: { role: "assistant", content: contentOf(output), refusal: null }, finish_reason: "stop", logprobs: null },
          ],
          usage: usageOf(result),
          output,
          run_id: result.runId,
          session_id: result.sessionId,
          warnings: result.warnings,
        },
        { "x-request-id": started.runId },
      );
      return;
    }

    // The client learns the run started (and its id) now, not with the first emitted value.
    const sse = openSse(req, res, keepAliveMs, { "x-request-id": started.runId });
    const write = sse.write;
    const chunk = (delta: Record<string, unknown>, finish: string | null, extra: Record<string, unknown> = {}) =>
      `data: ${JSON.stringify({
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
        ...extra,
      })}\n\n`;
    let first_chunk = true;
    try {
      for (let next = await events.next(); !next.done; next = await events.next()) {
        const event: RunStreamResponse["event"] = next.value.event;
        if (event.case === "emitted") {
          const value = fromValue(event.value.value);
          const delta: Record<string, unknown> = first_chunk
            ? { role: "assistant", content: contentOf(value) }
            : { content: contentOf(value) };
          first_chunk = false;
          // event_id lets a client that lost the stream rejoin its run after it, at GET /v1/runs/{id}/events
          // (a field of the chunk, not an SSE id: line, so that parsers reading "data: " blocks are not surprised).
          await write(chunk(delta, null, { emitted: value, event_id: next.value.eventId }));
        } else if (event.case === "result") {
          const result = event.value;
          await write(
            chunk(first_chunk ? { role: "assistant" } : {}, "stop", {
              output: fromValue(result.output),
              run_id: result.runId,
              session_id: result.sessionId,
              usage: usageOf(result),
            }),
          );
          await write("data: [DONE]\n\n");
        }
      }
    } catch (err) {
      if (!signal.aborted) await write(`data: ${JSON.stringify(toErrorBody(err, started.runId).body)}\n\n`);
    } finally {
      sse.close();
    }
  };
}
