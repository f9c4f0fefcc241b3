import type { JsonObject } from "@bufbuild/protobuf";
import type { RunResult, RunStreamResponse } from "../../gen/shaker/executor/v1/executor_pb.js";
import { inputRequired } from "../executor/rules.js";
import type { Clients } from "../shared/clients.js";
import { fromValue } from "../shared/json.js";
import { callerHeaders, field, HttpError, openSse, type Req, type Res, readJson, sendError, sendJson, toErrorBody } from "./http.js";
import { contentOf, invocationOf, resultOf, StreamedText, startRun, usageOf, workflowOf } from "./invocation.js";
import { proxyModelCall } from "./models.js";

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

/** createChatRoute answers POST /v1/chat/completions: workflows through the Executor, other models through the ModelProxy. */
export function createChatRoute(options: ChatRouteOptions) {
  const { clients } = options;
  const keepAliveMs = options.keepAliveMs ?? 15_000;

  return async function chatCompletions(req: Req, res: Res): Promise<void> {
    const headers = callerHeaders(req);
    const body = await readJson(req, options.maxBodyBytes, options.maxJsonDepth);
    const model = field.string(body, "model", true)!;
    const stream = field.boolean(body, "stream") ?? false;
    const workflow = workflowOf(model);
    if (!workflow) {
      await proxyModelCall(clients, res, body, headers, stream);
      return;
    }
    const messages = field.objectArray(body, "messages");
    const hasInput = "input" in body && body.input !== undefined;
    if (!messages && !hasInput) {
      throw new HttpError(400, inputRequired, "messages", "missing_field");
    }
    const params: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(body)) if (!invocationFields.has(k)) params[k] = v;
    const invocation = invocationOf(
      req,
      workflow,
      {
        messages: (messages ?? []) as JsonObject[],
        input: hasInput ? body.input : undefined,
        sessionId: field.string(body, "session_id"),
        secrets: field.stringMap(body, "secrets"),
        metadata: field.object(body, "metadata"),
        params,
        stream,
      },
      body,
    );

    const { started, events, signal, created } = await startRun(clients, res, headers, invocation);
    // Every caller of the same run (a retry, a duplicate with its Idempotency-Key) gets the same answer.
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
        result = await resultOf(events);
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
    const contentDelta = (content: string): Record<string, unknown> => {
      const delta = first_chunk ? { role: "assistant", content } : { content };
      first_chunk = false;
      return delta;
    };
    const streamed = new StreamedText();
    try {
      for (let next = await events.next(); !next.done; next = await events.next()) {
        const event: RunStreamResponse["event"] = next.value.event;
        if (event.case === "emitted") {
          const value = fromValue(event.value.value);
          const content = contentOf(value);
          streamed.add(content);
          // event_id lets a client that lost the stream rejoin its run after it, at GET /v1/runs/{id}/events
          // (a field of the chunk, not an SSE id: line, so that parsers reading "data: " blocks are not surprised).
          await write(chunk(contentDelta(content), null, { emitted: value, event_id: next.value.eventId }));
        } else if (event.case === "result") {
          const result = event.value;
          const output = fromValue(result.output);
          // The output's text, unless the emitted values already said it (docs/api.md §3, "The stream's text"):
          // what a generic client shows for the stream, and what it keeps as the assistant's message.
          const rest = streamed.rest(contentOf(output));
          if (rest !== "") await write(chunk(contentDelta(rest), null, { output_text: true }));
          await write(
            chunk(first_chunk ? { role: "assistant" } : {}, "stop", {
              output,
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
