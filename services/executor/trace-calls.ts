import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type { Interceptor, StreamResponse, UnaryResponse } from "@connectrpc/connect";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import type { Auth } from "../shared/auth.js";
import { type Span, SpanKind, type Telemetry, traceHeader } from "../shared/telemetry.js";
import { callSeqHeader, replayedHeader } from "./journal.js";

/** Options of createCallTracer. */
export interface CallTracerOptions {
  telemetry: Telemetry;
  auth: Auth;
  /** runSpan is the span of a run in flight in this process, or undefined. */
  runSpan: (runId: string) => Span | undefined;
}

const modelProxy = "shaker.modelproxy.v1.ModelProxyService";
const operations: Record<string, string> = { ChatCompletion: "chat", ChatCompletionStream: "chat", Embeddings: "embeddings" };

const num = (v: JsonValue | undefined): number | undefined => (typeof v === "number" ? v : undefined);
const obj = (v: JsonValue | undefined): JsonObject => (v && typeof v === "object" && !Array.isArray(v) ? v : {});

/** genAiAnswer sets the GenAI attributes of a model call's answer: the model, the tokens, why it stopped. */
function genAiAnswer(span: Span, answer: JsonObject): void {
  const usage = obj(answer.usage);
  const attributes: Record<string, string | number | string[]> = {};
  if (typeof answer.model === "string") attributes["gen_ai.response.model"] = answer.model;
  if (typeof answer.id === "string") attributes["gen_ai.response.id"] = answer.id;
  const input = num(usage.prompt_tokens);
  const output = num(usage.completion_tokens);
  if (input !== undefined) attributes["gen_ai.usage.input_tokens"] = input;
  if (output !== undefined) attributes["gen_ai.usage.output_tokens"] = output;
  const reasons = (Array.isArray(answer.choices) ? answer.choices : [])
    .map((c) => obj(c).finish_reason)
    .filter((r) => typeof r === "string");
  if (reasons.length > 0) attributes["gen_ai.response.finish_reasons"] = reasons as string[];
  span.setAttributes(attributes);
}

/**
 * createCallTracer makes every ctx call of a traced run a child span of the run's span: model calls
 * named and described by the OpenTelemetry GenAI conventions (`chat <model>`, with the models and
 * token counts), the others by their RPC. The call goes on with the span's `traceparent`, so what it
 * reaches (the ModelProxy's upstream, a ctx.http host, a nested run) joins the trace. It sits in
 * front of the journal, whose replayed answers are marked `shaker.call.replayed`.
 */
export function createCallTracer(options: CallTracerOptions): Interceptor {
  const { telemetry, auth } = options;
  return (next) => async (req) => {
    const seq = req.header.get(callSeqHeader);
    if (!telemetry.enabled || seq === null) return await next(req);
    let parent: Span | undefined;
    try {
      const identity = await auth.identify(req.header);
      parent = identity.kind === "run" ? options.runSpan(identity.claims.run) : undefined;
    } catch {
      // The handler refuses the call with the right error.
    }
    if (!parent) return await next(req);
    const service = req.service.typeName;
    const operation = service === modelProxy ? operations[req.method.name] : undefined;
    let name = `${service.split(".").at(-1)}/${req.method.name}`;
    const attributes: Record<string, string | number> = {
      "rpc.system": "connect_rpc",
      "rpc.service": service,
      "rpc.method": req.method.name,
      "shaker.call.seq": Number(seq),
    };
    if (operation) {
      // A server-streaming call's single request arrives as a stream of one: read it, pass it on.
      let input: unknown;
      if (req.stream) {
        const first = await req.message[Symbol.asyncIterator]().next();
        input = first.value;
        req = { ...req, message: createAsyncIterable(first.done ? [] : [first.value]) };
      } else input = req.message;
      const body = obj((input as { body?: JsonObject } | undefined)?.body);
      const requested = typeof body.model === "string" ? body.model : "default";
      Object.assign(attributes, {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": requested,
      });
      name = `${operation} ${requested}`;
    }
    const span = telemetry.startSpan(name, { parent, kind: SpanKind.CLIENT, attributes })!;
    req.header.set(traceHeader, telemetry.traceparent(span));
    let res: UnaryResponse | StreamResponse;
    try {
      res = await next(req);
    } catch (e) {
      telemetry.end(span, e);
      throw e;
    }
    if (res.header.get(replayedHeader)) span.setAttribute("shaker.call.replayed", true);
    if (!res.stream) {
      const answer = res.message as { completion?: JsonObject; response?: JsonObject };
      if (operation) genAiAnswer(span, obj((answer.completion ?? answer.response) as JsonValue));
      telemetry.end(span);
      return res;
    }
    const source = res.message;
    async function* traced() {
      const seen: JsonObject = {};
      try {
        for await (const m of source) {
          // A stream's chunks carry the model and id, and its last one the usage: keep what they said.
          const chunk = obj((m as { chunk?: JsonObject }).chunk as JsonValue);
          for (const k of ["model", "id", "usage"] as const) if (chunk[k] !== undefined) seen[k] = chunk[k];
          yield m;
        }
      } catch (e) {
        telemetry.end(span, e);
        throw e;
      }
      if (operation) genAiAnswer(span, seen);
      telemetry.end(span);
    }
    return { ...res, message: traced() };
  };
}
