// POST /v1/responses: OpenAI's Responses API (what Codex CLI and the OpenAI Agents SDK speak).
// `model: "workflow:<ref>"` runs the workflow as POST /v1/chat/completions does; any other model is
// a chat completion through the ModelProxy, translated both ways. docs/api.md §3 describes it.
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type { RunStreamResponse } from "../../gen/shaker/executor/v1/executor_pb.js";
import type { Clients } from "../shared/clients.js";
import { fromValue } from "../shared/json.js";
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
  sseHeaders,
  toErrorBody,
  writeDrained,
} from "./http.js";
import { contentOf, invocationOf, resultOf, StreamedText, startRun, usageOf, workflowOf } from "./invocation.js";
import { contextOf, upstreamError } from "./models.js";

/** Options of the responses route. */
export interface ResponsesRouteOptions {
  clients: Clients;
  maxBodyBytes: number;
  /** keepAliveMs is the interval of `: keep-alive` comments on a quiet stream; default 15 s. */
  keepAliveMs?: number;
  /** maxJsonDepth bounds how deeply a JSON body nests; default defaultMaxJsonDepth (64). */
  maxJsonDepth?: number;
}

/** Fields of a workflow request that are the invocation's own; every other field is an inference param (ctx.params). */
const invocationFields = new Set(["model", "input", "instructions", "workflow_input", "session_id", "secrets", "metadata", "stream"]);

type Json = Record<string, unknown>;

const roles = new Set(["user", "assistant", "system", "developer"]);

/** partOf turns one content part of an input message into a chat content part. */
function partOf(part: unknown, at: string): Json {
  if (part === null || typeof part !== "object" || Array.isArray(part))
    throw new HttpError(400, `'${at}' must be a JSON object`, at, "invalid_type");
  const p = part as Json;
  switch (p.type) {
    case "input_text":
    case "output_text":
    case "text":
      if (typeof p.text !== "string") throw new HttpError(400, `'${at}.text' must be a string`, `${at}.text`, "invalid_type");
      return { type: "text", text: p.text };
    case "refusal":
      return { type: "text", text: typeof p.refusal === "string" ? p.refusal : "" };
    case "input_image":
      if (typeof p.image_url !== "string") {
        throw new HttpError(400, `'${at}.image_url' must be a URL (file_id is not supported)`, `${at}.image_url`, "invalid_type");
      }
      return { type: "image_url", image_url: { url: p.image_url, ...(typeof p.detail === "string" ? { detail: p.detail } : {}) } };
    default:
      throw new HttpError(
        400,
        `'${at}.type' ${JSON.stringify(p.type)} is not supported: use input_text or input_image`,
        `${at}.type`,
        "invalid_value",
      );
  }
}

/**
 * messagesOf turns a Responses request's `instructions` and `input` into OpenAI chat messages:
 * `instructions` is a leading system message; a string `input` is one user message; an array holds
 * message items (`{role, content}`, content a string or parts), `function_call` items (an assistant
 * message's tool calls) and `function_call_output` items (tool messages).
 */
export function messagesOf(body: Json): Json[] {
  const messages: Json[] = [];
  const instructions = field.string(body, "instructions");
  if (instructions) messages.push({ role: "system", content: instructions });
  const input = body.input;
  if (input === undefined || input === null) return messages;
  if (typeof input === "string") {
    messages.push({ role: "user", content: input });
    return messages;
  }
  if (!Array.isArray(input)) throw new HttpError(400, "'input' must be a string or an array of items", "input", "invalid_type");
  input.forEach((raw, i) => {
    const at = `input[${i}]`;
    if (raw === null || typeof raw !== "object" || Array.isArray(raw))
      throw new HttpError(400, `'${at}' must be a JSON object`, at, "invalid_type");
    const item = raw as Json;
    const type = item.type ?? "message";
    if (type === "message") {
      if (typeof item.role !== "string" || !roles.has(item.role)) {
        throw new HttpError(400, `'${at}.role' must be one of user, assistant, system, developer`, `${at}.role`, "invalid_value");
      }
      let content: unknown = item.content;
      if (Array.isArray(content)) {
        const parts = content.map((part, j) => partOf(part, `${at}.content[${j}]`));
        content = parts.every((p) => p.type === "text") ? parts.map((p) => p.text).join("") : parts;
      } else if (typeof content !== "string") {
        throw new HttpError(400, `'${at}.content' must be a string or an array of parts`, `${at}.content`, "invalid_type");
      }
      messages.push({ role: item.role, content });
    } else if (type === "function_call") {
      const call = {
        id: String(item.call_id ?? item.id ?? ""),
        type: "function",
        function: { name: String(item.name ?? ""), arguments: String(item.arguments ?? "") },
      };
      // The calls of one turn are one assistant message, as chat completions want them.
      const last = messages.at(-1);
      if (last?.role === "assistant") last.tool_calls = [...((last.tool_calls as Json[] | undefined) ?? []), call];
      else messages.push({ role: "assistant", content: null, tool_calls: [call] });
    } else if (type === "function_call_output") {
      const output = item.output;
      messages.push({
        role: "tool",
        tool_call_id: String(item.call_id ?? ""),
        content: typeof output === "string" ? output : JSON.stringify(output ?? ""),
      });
    } else {
      throw new HttpError(
        400,
        `'${at}.type' ${JSON.stringify(type)} is not supported: use message, function_call or function_call_output`,
        `${at}.type`,
        "invalid_value",
      );
    }
  });
  return messages;
}

/** ResponseUsage is a response's token usage in the Responses shape. */
function responseUsage(input: number, output: number, total: number): Json {
  return {
    input_tokens: input,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: output,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: total || input + output,
  };
}

/** outputText is an output_text content part. */
function outputText(text: string): Json {
  return { type: "output_text", text, annotations: [], logprobs: [] };
}

/** messageItem is the assistant message of a response. */
function messageItem(id: string, status: "in_progress" | "completed" | "incomplete", content: Json[]): Json {
  return { type: "message", id, status, role: "assistant", content };
}

/** ResponseBase is what every Response object of one request says the same way. */
interface ResponseBase {
  id: string;
  created_at: number;
  model: string;
  body: Json;
  /** extras are Shaker's own fields (run_id, session_id, call_id). */
  extras: Json;
}

/** responseObject is an OpenAI Response object. */
function responseObject(base: ResponseBase, status: string, output: Json[], more: Json = {}): Json {
  const { body } = base;
  return {
    id: base.id,
    object: "response",
    created_at: base.created_at,
    status,
    background: false,
    completed_at: status === "completed" ? Math.floor(Date.now() / 1000) : null,
    error: null,
    incomplete_details: null,
    instructions: typeof body.instructions === "string" ? body.instructions : null,
    max_output_tokens: typeof body.max_output_tokens === "number" ? body.max_output_tokens : null,
    metadata: body.metadata && typeof body.metadata === "object" ? body.metadata : {},
    model: base.model,
    output,
    parallel_tool_calls: typeof body.parallel_tool_calls === "boolean" ? body.parallel_tool_calls : true,
    previous_response_id: null,
    temperature: typeof body.temperature === "number" ? body.temperature : null,
    text: body.text && typeof body.text === "object" ? body.text : { format: { type: "text" } },
    tool_choice: body.tool_choice ?? "auto",
    tools: Array.isArray(body.tools) ? body.tools : [],
    top_p: typeof body.top_p === "number" ? body.top_p : null,
    truncation: "disabled",
    usage: null,
    ...more,
    ...base.extras,
  };
}

/**
 * ResponseEvents writes a Responses stream: `event: <type>` and `data: <json>` with `type` and
 * `sequence_number`, one assistant message (output 0) with one output_text part whose text is
 * given in deltas, then its done events and `response.completed`, or `response.failed`.
 */
class ResponseEvents {
  private seq = 0;
  private open = false;
  private readonly itemId: string;

  constructor(
    private readonly write: (text: string) => Promise<void>,
    private readonly base: ResponseBase,
    itemId: string,
  ) {
    this.itemId = itemId;
  }

  private send(type: string, fields: Json): Promise<void> {
    return this.write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: this.seq++, ...fields })}\n\n`);
  }

  /** start says the response was created and is in progress. */
  async start(): Promise<void> {
    const response = responseObject(this.base, "in_progress", []);
    await this.send("response.created", { response });
    await this.send("response.in_progress", { response });
  }

  /** openMessage adds the message and its text part, once. */
  private async openMessage(): Promise<void> {
    if (this.open) return;
    this.open = true;
    await this.send("response.output_item.added", { output_index: 0, item: messageItem(this.itemId, "in_progress", []) });
    await this.send("response.content_part.added", { item_id: this.itemId, output_index: 0, content_index: 0, part: outputText("") });
  }

  /** delta sends text of the message; `extra` are Shaker's fields of the event (emitted, event_id, output_text). */
  async delta(text: string, extra: Json = {}): Promise<void> {
    await this.openMessage();
    await this.send("response.output_text.delta", {
      item_id: this.itemId,
      output_index: 0,
      content_index: 0,
      delta: text,
      logprobs: [],
      ...extra,
    });
  }

  /**
   * complete ends the message with its final text (when `withMessage`), then sends the items that
   * follow it (function calls) and `response.completed`.
   */
  async complete(text: string | undefined, after: Json[], more: Json): Promise<void> {
    const output: Json[] = [];
    if (text !== undefined) {
      await this.openMessage();
      const part = outputText(text);
      await this.send("response.output_text.done", { item_id: this.itemId, output_index: 0, content_index: 0, text, logprobs: [] });
      await this.send("response.content_part.done", { item_id: this.itemId, output_index: 0, content_index: 0, part });
      const item = messageItem(this.itemId, more.status === "incomplete" ? "incomplete" : "completed", [part]);
      await this.send("response.output_item.done", { output_index: 0, item });
      output.push(item);
    }
    for (const item of after) {
      const output_index = output.length;
      await this.send("response.output_item.added", { output_index, item: { ...item, status: "in_progress" } });
      if (item.type === "function_call") {
        await this.send("response.function_call_arguments.done", {
          item_id: item.id,
          output_index,
          name: item.name,
          arguments: item.arguments,
        });
      }
      await this.send("response.output_item.done", { output_index, item });
      output.push(item);
    }
    const status = typeof more.status === "string" ? more.status : "completed";
    await this.send(status === "incomplete" ? "response.incomplete" : "response.completed", {
      response: responseObject(this.base, status, output, more),
    });
  }

  /** fail ends the stream with `response.failed`, its `error` being {code, message} of the error. */
  async fail(err: unknown, runId?: string): Promise<void> {
    const { error } = toErrorBody(err, runId).body;
    await this.send("response.failed", {
      response: responseObject(this.base, "failed", [], { error: { code: error.code ?? "server_error", message: error.message } }),
    });
  }
}

/** chatBodyOf translates a Responses request for a plain model into a chat completions request. */
function chatBodyOf(body: Json, stream: boolean): Json {
  const {
    input: _input,
    instructions: _instructions,
    workflow_input: _workflowInput,
    max_output_tokens,
    tools,
    tool_choice,
    text,
    reasoning,
    store: _store,
    include: _include,
    truncation: _truncation,
    background: _background,
    previous_response_id: _previous,
    stream_options: _streamOptions,
    ...rest
  } = body;
  const chat: Json = { ...rest, messages: messagesOf(body), stream };
  if (typeof max_output_tokens === "number") chat.max_tokens = max_output_tokens;
  if (Array.isArray(tools)) {
    chat.tools = tools.map((tool, i) => {
      const t = (tool ?? {}) as Json;
      if (t.type !== "function") {
        throw new HttpError(
          400,
          `'tools[${i}].type' ${JSON.stringify(t.type)} is not supported for a plain model: use function tools`,
          `tools[${i}].type`,
          "invalid_value",
        );
      }
      const fn: Json = { name: t.name, parameters: t.parameters ?? { type: "object", properties: {} } };
      if (t.description !== undefined) fn.description = t.description;
      if (t.strict !== undefined && t.strict !== null) fn.strict = t.strict;
      return { type: "function", function: fn };
    });
  }
  if (tool_choice !== undefined) {
    const c = tool_choice as Json;
    chat.tool_choice = c && typeof c === "object" && c.type === "function" ? { type: "function", function: { name: c.name } } : tool_choice;
  }
  const format = text && typeof text === "object" ? ((text as Json).format as Json | undefined) : undefined;
  if (format?.type === "json_schema") {
    chat.response_format = {
      type: "json_schema",
      json_schema: { name: format.name, schema: format.schema, strict: format.strict ?? undefined },
    };
  } else if (format?.type === "json_object") {
    chat.response_format = { type: "json_object" };
  }
  const effort = reasoning && typeof reasoning === "object" ? (reasoning as Json).effort : undefined;
  if (typeof effort === "string") chat.reasoning_effort = effort;
  // The usage of a streamed answer comes in its last chunk, for response.completed.
  if (stream) chat.stream_options = { include_usage: true };
  return chat;
}

/** functionCallItem is a chat tool call as a Responses function_call item. */
function functionCallItem(call: Json): Json {
  const fn = (call.function ?? {}) as Json;
  const id = String(call.id ?? "");
  return {
    type: "function_call",
    id: `fc_${id}`,
    call_id: id,
    name: String(fn.name ?? ""),
    arguments: String(fn.arguments ?? ""),
    status: "completed",
  };
}

/** usageOfCompletion is a chat completion's usage in the Responses shape. */
function usageOfCompletion(usage: unknown): Json {
  const u = (usage ?? {}) as Json;
  const n = (v: unknown) => (typeof v === "number" ? v : 0);
  return responseUsage(n(u.prompt_tokens), n(u.completion_tokens), n(u.total_tokens));
}

/** endOf is the status of a response whose model stopped for `finish`: `incomplete` when it ran out of tokens. */
function endOf(finish: unknown): Json {
  return finish === "length" ? { status: "incomplete", incomplete_details: { reason: "max_output_tokens" } } : {};
}

/** createResponsesRoute answers POST /v1/responses: workflows through the Executor, other models through the ModelProxy. */
export function createResponsesRoute(options: ResponsesRouteOptions) {
  const { clients } = options;
  const keepAliveMs = options.keepAliveMs ?? 15_000;

  /** proxied answers a plain model as a chat completion through the ModelProxy, translated to and from the Responses shape. */
  async function proxied(res: Res, body: Json, model: string, headers: Record<string, string>, stream: boolean): Promise<void> {
    if (body.input === undefined || body.input === null) throw new HttpError(400, "'input' is required", "input", "missing_field");
    const { context, openaiBody } = contextOf(chatBodyOf(body, stream));
    const signal = disconnectSignal(res);
    const base = (callId: string, created: number, answered: string): ResponseBase => ({
      id: `resp_${callId}`,
      created_at: created,
      model: answered || model,
      body,
      extras: { call_id: callId },
    });
    if (!stream) {
      let resp: Awaited<ReturnType<typeof clients.modelproxy.chatCompletion>>;
      try {
        resp = await clients.modelproxy.chatCompletion({ body: openaiBody, context }, { headers, signal });
      } catch (err) {
        throw upstreamError(err);
      }
      const completion = (resp.completion ?? {}) as Json;
      const choice = ((completion.choices as Json[] | undefined) ?? [])[0] ?? {};
      const message = (choice.message ?? {}) as Json;
      const calls = ((message.tool_calls as Json[] | undefined) ?? []).map(functionCallItem);
      const text = typeof message.content === "string" ? message.content : "";
      const end = endOf(choice.finish_reason);
      const output: Json[] = [];
      if (text !== "" || calls.length === 0) {
        output.push(messageItem(`msg_${resp.callId}`, end.status === "incomplete" ? "incomplete" : "completed", [outputText(text)]));
      }
      output.push(...calls);
      const created = typeof completion.created === "number" ? completion.created : Math.floor(Date.now() / 1000);
      const b = base(resp.callId, created, typeof completion.model === "string" ? completion.model : "");
      sendJson(res, 200, responseObject(b, "completed", output, { usage: usageOfCompletion(completion.usage), ...end }), {
        "x-request-id": resp.callId,
      });
      return;
    }
    const events = clients.modelproxy.chatCompletionStream({ body: openaiBody, context }, { headers, signal })[Symbol.asyncIterator]();
    let first: IteratorResult<{ callId: string; chunk?: JsonObject }>;
    try {
      // Every error known before the first chunk (auth, bad input, upstream down) is answered with its status.
      first = await events.next();
    } catch (err) {
      throw upstreamError(err);
    }
    const callId = first.done ? "" : first.value.callId;
    const firstChunk = (first.done ? {} : (first.value.chunk ?? {})) as Json;
    res.writeHead(200, { ...sseHeaders, ...(callId ? { "x-request-id": callId } : {}) });
    const b = base(
      callId,
      typeof firstChunk.created === "number" ? firstChunk.created : Math.floor(Date.now() / 1000),
      typeof firstChunk.model === "string" ? firstChunk.model : "",
    );
    const out = new ResponseEvents((text) => writeDrained(res, text), b, `msg_${callId}`);
    try {
      await out.start();
      let text = "";
      let usage: unknown;
      let finish: unknown;
      const calls = new Map<number, Json>();
      for (let next = first; !next.done; next = await events.next()) {
        const chunk = (next.value.chunk ?? {}) as Json;
        if (chunk.usage) usage = chunk.usage;
        const choice = ((chunk.choices as Json[] | undefined) ?? [])[0];
        if (!choice) continue;
        if (choice.finish_reason) finish = choice.finish_reason;
        const delta = (choice.delta ?? {}) as Json;
        if (typeof delta.content === "string" && delta.content !== "") {
          text += delta.content;
          await out.delta(delta.content);
        }
        for (const tc of (delta.tool_calls as Json[] | undefined) ?? []) {
          const index = typeof tc.index === "number" ? tc.index : 0;
          const call = calls.get(index) ?? { id: "", function: { name: "", arguments: "" } };
          const fn = call.function as Json;
          const d = (tc.function ?? {}) as Json;
          if (typeof tc.id === "string") call.id = tc.id;
          if (typeof d.name === "string") fn.name = `${fn.name}${d.name}`;
          if (typeof d.arguments === "string") fn.arguments = `${fn.arguments}${d.arguments}`;
          calls.set(index, call);
        }
      }
      const items = [...calls.entries()].sort(([a], [c]) => a - c).map(([, call]) => functionCallItem(call));
      await out.complete(text !== "" || items.length === 0 ? text : undefined, items, {
        usage: usageOfCompletion(usage),
        ...endOf(finish),
      });
    } catch (err) {
      if (!signal.aborted) await out.fail(upstreamError(err));
    } finally {
      res.end();
    }
  }

  return async function responses(req: Req, res: Res): Promise<void> {
    const headers = callerHeaders(req);
    const body = await readJson(req, options.maxBodyBytes, options.maxJsonDepth);
    const model = field.string(body, "model", true)!;
    const stream = field.boolean(body, "stream") ?? false;
    if (body.previous_response_id !== undefined && body.previous_response_id !== null) {
      throw new HttpError(
        400,
        "'previous_response_id' is not supported: Shaker keeps no responses to continue; send the whole conversation in 'input'",
        "previous_response_id",
        "unsupported_parameter",
      );
    }
    const workflow = workflowOf(model);
    if (!workflow) {
      await proxied(res, body, model, headers, stream);
      return;
    }
    const hasInput = body.input !== undefined && body.input !== null;
    const hasWorkflowInput = "workflow_input" in body && body.workflow_input !== undefined;
    if (!hasInput && !hasWorkflowInput)
      throw new HttpError(400, "either 'input' or 'workflow_input' is required", "input", "missing_field");
    const messages = messagesOf(body);
    const params: Json = {};
    for (const [k, v] of Object.entries(body)) if (!invocationFields.has(k)) params[k] = v;
    const invocation = invocationOf(
      req,
      workflow,
      {
        messages: messages as JsonObject[],
        input: hasWorkflowInput ? body.workflow_input : undefined,
        sessionId: field.string(body, "session_id"),
        secrets: field.stringMap(body, "secrets"),
        metadata: field.object(body, "metadata"),
        params,
        stream,
      },
      // The same body means another run here than at /v1/chat/completions (a string input is a message, not ctx.input).
      { ...body, $route: "POST /v1/responses" },
    );

    const { started, events, signal, created } = await startRun(clients, res, headers, invocation);
    const runId = started.runId;
    const base: ResponseBase = {
      id: `resp_${runId}`,
      created_at: created,
      model,
      body,
      extras: { run_id: runId, session_id: started.sessionId },
    };
    const itemId = `msg_${runId}`;
    if (started.detached) {
      // An async workflow: the run goes on; its result is read at GET /v1/runs/{id}.
      sendJson(res, 202, responseObject(base, "in_progress", [], { result_url: `/v1/runs/${runId}` }), {
        "x-request-id": runId,
        location: `/v1/runs/${runId}`,
      });
      return;
    }

    const answered = (output: JsonValue, result: Parameters<typeof usageOf>[0]): Json => {
      const usage = usageOf(result);
      return {
        usage: responseUsage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
        workflow_output: output,
        warnings: result.warnings,
      };
    };

    if (!stream) {
      let result: Awaited<ReturnType<typeof resultOf>>;
      try {
        result = await resultOf(events);
      } catch (err) {
        // The run started, so its record (and traceback) exists: the answer names it.
        sendError(res, err, runId);
        return;
      }
      const output = fromValue(result.output);
      const item = messageItem(itemId, "completed", [outputText(contentOf(output))]);
      sendJson(res, 200, responseObject(base, "completed", [item], answered(output, result)), { "x-request-id": runId });
      return;
    }

    const sse = openSse(req, res, keepAliveMs, { "x-request-id": runId });
    const out = new ResponseEvents(sse.write, base, itemId);
    const streamed = new StreamedText();
    try {
      await out.start();
      for (let next = await events.next(); !next.done; next = await events.next()) {
        const event: RunStreamResponse["event"] = next.value.event;
        if (event.case === "emitted") {
          const value = fromValue(event.value.value);
          const text = contentOf(value);
          streamed.add(text);
          await out.delta(text, { emitted: value, event_id: next.value.eventId });
        } else if (event.case === "result") {
          const result = event.value;
          const output = fromValue(result.output);
          const text = contentOf(output);
          // The deltas are the stream's text of §3; the done events and response.completed hold the
          // output's text, so the final response is the non-streamed one.
          const rest = streamed.rest(text);
          if (rest !== "") await out.delta(rest, { output_text: true });
          await out.complete(text, [], answered(output, result));
        }
      }
    } catch (err) {
      if (!signal.aborted) await out.fail(err, runId);
    } finally {
      sse.close();
    }
  };
}
