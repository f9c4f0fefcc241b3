import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type { RunResult, RunStreamResponse } from "../../gen/shaker/executor/v1/executor_pb.js";
import { inputRequired } from "../executor/rules.js";
import type { Clients } from "../shared/clients.js";
import { fromValue, toValue } from "../shared/json.js";
import { namePattern } from "../shared/names.js";
import {
  callerHeaders,
  disconnectSignal,
  field,
  HttpError,
  type Req,
  type Res,
  readJson,
  sendError,
  sendJson,
  sseHeaders,
  toErrorBody,
  writeDrained,
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
    };

    const signal = disconnectSignal(res);
    const events = clients.executor.runStream({ invocation }, { headers, signal })[Symbol.asyncIterator]();
    // Every error that can be known before the run starts arrives before the first message: answer it with its status.
    const first = await events.next();
    if (first.done || first.value.event.case !== "started") throw new HttpError(502, "the Executor ended the run before starting it");
    const started = first.value.event.value;
    const created = Math.floor(Date.now() / 1000);
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

    res.writeHead(200, {
      ...sseHeaders,
      "x-request-id": started.runId,
      ...("httpVersionMajor" in req && req.httpVersionMajor === 1 ? { connection: "keep-alive" } : {}),
    });
    // The client learns the run started (and its id) now, not with the first emitted value.
    res.flushHeaders();
    let lastWrite = Date.now();
    const write = (text: string) => {
      lastWrite = Date.now();
      return writeDrained(res, text);
    };
    const keepAlive = setInterval(() => {
      if (Date.now() - lastWrite >= keepAliveMs - 5) void write(": keep-alive\n\n");
    }, keepAliveMs);
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
          await write(chunk(delta, null, { emitted: value }));
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
      clearInterval(keepAlive);
      res.end();
    }
  };
}
