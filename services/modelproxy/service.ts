import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { type CallContext, type ModelCallSchema, ModelProxyService } from "../../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { type Identity, requireAccount, requireAdmin } from "../shared/auth.js";
import type { ServiceDeps } from "../shared/deps.js";
import { errorMetadata, invalidArgument } from "../shared/errors.js";
import { newId } from "../shared/ids.js";
import { timestampOf } from "../shared/json.js";
import { createRedactor, redactJson } from "../shared/redact.js";
import { traceHeader } from "../shared/telemetry.js";
import { localChat, localChatStream, localEmbeddings } from "./local.js";
import {
  classify,
  listModels,
  loadProxyConfig,
  type ProxyConfig,
  resolveTargets,
  retryAfterMs,
  sleep,
  type Target,
  type UpstreamFailure,
} from "./providers.js";
import { createRecorder, type RecorderOptions } from "./recorder.js";
import { checkCallLimit } from "./rules.js";
import type { AttemptRecord } from "./schema.js";
import type { CallRow, ModelProxyStore } from "./store.js";
import type { Cancellable } from "./upstream.js";

type Json = Record<string, unknown>;

/** Call is one model call in flight: who made it and how it goes. */
interface Call {
  id: string;
  accountId: string;
  sessionId: string;
  runId: string;
  workflowRefName: string;
  intent: string;
  application: string;
  kind: "chat" | "chat_stream" | "embeddings";
  model: string;
  provider: string;
  attempts: AttemptRecord[];
  createdAt: number;
  t0: number;
  ttftMs: number;
  redact: (text: string) => string;
  /** redacting says the call has secret values to blank out of its record. */
  redacting: boolean;
  request: Json;
}

/**
 * Watch bounds one attempt: it ends the request in flight when the caller goes away or nothing
 * arrives for timeoutMs. A timer and one listener on the caller's signal, no AbortController: the
 * upstream client hands it the function that ends its request.
 */
class Watch implements Cancellable {
  timedOut = false;
  private cancel: ((reason: Error) => void) | undefined;
  private reason: Error | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly onOuter: () => void;

  constructor(
    private readonly outer: AbortSignal,
    timeoutMs: number,
  ) {
    this.onOuter = () => this.end(outer.reason instanceof Error ? outer.reason : new Error("the caller cancelled the model call"));
    outer.addEventListener("abort", this.onOuter, { once: true });
    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.end(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
  }

  private end(reason: Error): void {
    if (this.reason) return;
    this.reason = reason;
    this.cancel?.(reason);
  }

  onCancel(cancel: (reason: Error) => void): void {
    if (this.reason) cancel(this.reason);
    else this.cancel = cancel;
  }

  /** touch restarts the timer (a chunk arrived). */
  touch(): void {
    this.timer.refresh();
  }

  dispose(): void {
    clearTimeout(this.timer);
    this.outer.removeEventListener("abort", this.onOuter);
    this.cancel = undefined;
  }
}

const invalid = invalidArgument;

const unchanged = (text: string) => text;

/**
 * refuseNul refuses text a record keeps or a listing looks up when it holds a NUL character, naming
 * its field: PostgreSQL's text cannot hold one, and SQLite refuses it too so that both answer alike.
 */
function refuseNul(fields: Record<string, unknown>): void {
  for (const [field, value] of Object.entries(fields)) {
    if (typeof value === "string" && value.includes("\0")) throw invalid(`${field} must not contain NUL characters`, field);
  }
}

/** Options of createModelProxyService. */
export interface ModelProxyOptions extends Pick<ServiceDeps, "config" | "auth"> {
  /** store keeps the call records; the caller opens it and closes it after the service. */
  store: ModelProxyStore;
  /** recorder tunes the batching of call records (tests). */
  recorder?: RecorderOptions;
  /** proxyConfig replaces the routing table read from the environment and config file. */
  proxyConfig?: ProxyConfig;
}

/** ModelProxyServiceHandle is the ModelProxy as the composition root holds it. */
export interface ModelProxyServiceHandle {
  impl: ServiceImpl<typeof ModelProxyService>;
  /** routes serves impl on a router. */
  routes(router: ConnectRouter): void;
  /** close writes the records still pending. */
  close(): Promise<void>;
}

// Where a NUL character in a call's recorded error stands: PostgreSQL's text cannot hold one, and
// an upstream's error message is not the caller's to fix.
const nulStandIn = "\uFFFD";

/**
 * createModelProxyService builds the ModelProxy's handlers: routing to providers with retries,
 * timeouts and fallbacks, streaming pass-through, and a record of every call written in batches
 * off the hot path. Throws at start when the models config is malformed.
 */
export function createModelProxyService(options: ModelProxyOptions): ModelProxyServiceHandle {
  const { store, auth } = options;
  const cfg = options.proxyConfig ?? loadProxyConfig(options.config);
  const recorder = createRecorder(store, options.recorder);
  const metrics = { calls: 0, attempts: 0 };

  async function begin(ctx: HandlerContext, context: CallContext | undefined, kind: Call["kind"], body: Json | undefined): Promise<Call> {
    const identity: Identity = await auth.identify(ctx.requestHeader);
    const accountId = requireAccount(identity);
    const c = context;
    const run = identity.kind === "run" ? identity.claims : undefined;
    const secrets = c?.redactValues ?? [];
    if (!body) throw invalid("'body' is required", "body");
    refuseNul({
      session_id: c?.sessionId,
      run_id: c?.runId,
      workflow_ref_name: c?.workflowRefName,
      intent: c?.intent,
      application: c?.application,
      model: body.model,
    });
    return {
      id: newId("call"),
      accountId,
      // A run token's own run and session win: a run can only make calls attributed to itself.
      sessionId: run ? run.session : (c?.sessionId ?? ""),
      runId: run ? run.run : (c?.runId ?? ""),
      workflowRefName: run ? run.workflow : (c?.workflowRefName ?? ""),
      intent: c?.intent ?? "",
      application: c?.application ?? "",
      kind,
      model: typeof body.model === "string" ? body.model : "",
      provider: "",
      attempts: [],
      createdAt: Date.now(),
      t0: performance.now(),
      ttftMs: 0,
      redact: secrets.length ? createRedactor(secrets) : unchanged,
      redacting: secrets.length > 0,
      request: body,
    };
  }

  function finish(call: Call, outcome: { response?: unknown; usage?: unknown; error?: unknown }): void {
    metrics.calls++;
    const usage = (outcome.usage ?? {}) as { prompt_tokens?: number; completion_tokens?: number };
    const error = outcome.error === undefined ? "" : call.redact(ConnectError.from(outcome.error).rawMessage).replaceAll("\0", nulStandIn);
    recorder.push({
      id: call.id,
      accountId: call.accountId,
      sessionId: call.sessionId,
      runId: call.runId,
      workflowRefName: call.workflowRefName,
      intent: call.intent,
      application: call.application,
      kind: call.kind,
      model: call.model,
      provider: call.provider,
      attempts: call.attempts.length,
      attemptLog: call.attempts,
      status: outcome.error === undefined ? "ok" : "error",
      error,
      latencyMs: performance.now() - call.t0,
      ttftMs: call.ttftMs,
      promptTokens: Number(usage.prompt_tokens ?? 0) || 0,
      completionTokens: Number(usage.completion_tokens ?? 0) || 0,
      // Without secret values the record takes the request and answer as they are, rather than
      // copies: the recorder encodes them as JSON as it takes the record.
      request: call.redacting ? redactJson(call.request, call.redact) : call.request,
      response: outcome.response === undefined ? null : call.redacting ? redactJson(outcome.response, call.redact) : outcome.response,
      createdAt: call.createdAt,
    });
  }

  function targetsFor(call: Call, kind: "chat" | "embedding"): Target[] {
    const { targets } = resolveTargets(cfg, kind, { model: call.model, intent: call.intent, application: call.application });
    return targets;
  }

  function giveUp(call: Call, last: UpstreamFailure | undefined): ConnectError {
    const where = `${call.model || "?"} at ${call.provider || "?"}`;
    const text = call.redact(
      `the model call failed after ${call.attempts.length} attempt(s); last: ${where}: ${last?.message ?? "no provider"}`,
    );
    if (last?.timeout) return new ConnectError(text, Code.DeadlineExceeded, new Headers({ [errorMetadata.upstreamStatus]: "504" }));
    return new ConnectError(text, Code.Unavailable, new Headers({ [errorMetadata.upstreamStatus]: "502" }));
  }

  /**
   * attempt tries each target in order, retrying each on 429, 5xx, timeouts and lost connections
   * with exponential backoff (or the upstream's Retry-After), and records every attempt. On success
   * the attempt's watch is handed back still armed, for streams to keep using.
   */
  async function attempt<T>(
    call: Call,
    targets: Target[],
    outer: AbortSignal,
    fn: (t: Target, w: Watch) => Promise<T>,
  ): Promise<{ value: T; watch: Watch }> {
    let last: UpstreamFailure | undefined;
    for (const target of targets) {
      call.model = target.model;
      call.provider = target.provider.name;
      let backoff = 0;
      for (let i = 0; i <= target.provider.maxRetries; i++) {
        if (backoff > 0) {
          try {
            await sleep(backoff, outer);
          } catch {
            throw new ConnectError("the caller cancelled the model call", Code.Canceled);
          }
        }
        const w = new Watch(outer, target.provider.timeoutMs);
        const started = performance.now();
        metrics.attempts++;
        try {
          const value = await fn(target, w);
          call.attempts.push({
            model: target.model,
            provider: target.provider.name,
            status: 200,
            error: "",
            durationMs: performance.now() - started,
          });
          return { value, watch: w };
        } catch (e) {
          w.dispose();
          if (outer.aborted) throw new ConnectError("the caller cancelled the model call", Code.Canceled);
          // The proxy's own refusals (a bad input to the local model) are the caller's errors, not the upstream's.
          if (e instanceof ConnectError) throw e;
          const f = classify(e, w.timedOut, target.provider.timeoutMs);
          last = f;
          call.attempts.push({
            model: target.model,
            provider: target.provider.name,
            status: f.status,
            error: call.redact(f.message),
            durationMs: performance.now() - started,
          });
          if (f.next === "stop") {
            throw new ConnectError(call.redact(`the upstream model refused the request: ${f.message}`), Code.InvalidArgument);
          }
          if (f.next === "next") break;
          backoff = retryAfterMs(e) ?? cfg.backoffMs * 2 ** i;
        }
      }
    }
    throw giveUp(call, last);
  }

  function checkMessages(body: Json): void {
    if (!Array.isArray(body.messages)) throw invalid("'messages' is required and must be an array of chat messages", "messages");
    body.messages.forEach((m, i) => {
      if (m === null || typeof m !== "object" || Array.isArray(m))
        throw invalid(`'messages[${i}]' must be a JSON object`, `messages[${i}]`);
    });
    if (body.model !== undefined && typeof body.model !== "string") throw invalid("'model' must be a string", "model");
  }

  /** traced is the caller's trace (W3C traceparent), if it has one, for the upstream request to carry on. */
  const traced = (ctx: HandlerContext): string | undefined => ctx.requestHeader.get(traceHeader) ?? undefined;

  const impl: ServiceImpl<typeof ModelProxyService> = {
    async chatCompletion(req, ctx) {
      const call = await begin(ctx, req.context, "chat", req.body);
      try {
        checkMessages(call.request);
        const { stream: _s, stream_options: _o, ...body } = call.request;
        const { value, watch: w } = await attempt(call, targetsFor(call, "chat"), ctx.signal, async (t, w) => {
          if (!t.provider.client) return localChat(body);
          const completion = (await t.provider.client.json(
            "/chat/completions",
            { ...body, model: t.model, stream: false },
            traced(ctx),
            w,
          )) as Json | null;
          if (!completion || typeof completion !== "object" || !Array.isArray(completion.choices)) {
            throw new SyntaxError("the answer is not a chat.completion object");
          }
          return completion;
        });
        w.dispose();
        finish(call, { response: value, usage: value.usage });
        return { completion: value as JsonObject, callId: call.id };
      } catch (e) {
        finish(call, { error: e });
        throw e;
      }
    },

    async *chatCompletionStream(req, ctx) {
      const call = await begin(ctx, req.context, "chat_stream", req.body);
      const asked = call.request.stream_options as Json | undefined;
      const collected = {
        id: "",
        model: "",
        content: "",
        toolCalls: [] as Json[],
        finish: null as unknown,
        usage: undefined as unknown,
        role: "assistant",
      };
      let w: Watch | undefined;
      let upstreamIterator: AsyncIterator<unknown> | undefined;
      let ended = false;
      let error: unknown;
      try {
        checkMessages(call.request);
        const body: Json = { ...call.request, stream: true, stream_options: { ...(asked ?? {}), include_usage: true } };
        const opened = await attempt(call, targetsFor(call, "chat"), ctx.signal, async (t, w) => {
          const iterator: AsyncIterator<unknown> = t.provider.client
            ? await t.provider.client.stream("/chat/completions", { ...body, model: t.model }, traced(ctx), w)
            : localChatStream(body, ctx.signal);
          // Failures before the first chunk are retried; after it, the stream is the caller's.
          const first = await iterator.next();
          return { iterator, first };
        });
        w = opened.watch;
        const { iterator } = opened.value;
        upstreamIterator = iterator;
        for (let next = opened.value.first; ; next = await iterator.next()) {
          if (next.done) {
            ended = true;
            break;
          }
          if (call.ttftMs === 0) call.ttftMs = performance.now() - call.t0;
          const chunk = next.value as Json;
          collect(collected, chunk);
          yield { chunk: chunk as JsonObject, callId: call.id };
          w.touch();
        }
      } catch (e) {
        if (w?.timedOut) {
          error = new ConnectError(
            `the upstream stream stalled: no chunk within ${cfg.providers.get(call.provider)?.timeoutMs} ms`,
            Code.DeadlineExceeded,
            new Headers({ [errorMetadata.upstreamStatus]: "504" }),
          );
        } else if (ctx.signal.aborted) {
          error = new ConnectError("the caller cancelled the model call", Code.Canceled);
        } else if (e instanceof ConnectError) {
          error = e;
        } else {
          error = new ConnectError(
            call.redact(`the upstream stream failed: ${classify(e, false, 0).message}`),
            Code.Unavailable,
            new Headers({ [errorMetadata.upstreamStatus]: "502" }),
          );
        }
        throw error;
      } finally {
        // A consumer that stopped early must not leave the upstream request open.
        if (upstreamIterator && !ended) Promise.resolve(upstreamIterator.return?.()).catch(() => {});
        w?.dispose();
        const response = {
          id: collected.id,
          object: "chat.completion",
          model: collected.model,
          choices: [
            {
              index: 0,
              message: {
                role: collected.role,
                content: collected.content || null,
                ...(collected.toolCalls.length ? { tool_calls: collected.toolCalls } : {}),
              },
              finish_reason: collected.finish,
            },
          ],
          usage: collected.usage ?? null,
        };
        // A consumer that stops early ends the generator without an error: recorded as cancelled.
        const cancelled = error === undefined && collected.finish === null && ctx.signal.aborted;
        finish(call, {
          response,
          usage: collected.usage,
          error: error ?? (cancelled ? new ConnectError("the caller cancelled the model call", Code.Canceled) : undefined),
        });
      }
    },

    async embeddings(req, ctx) {
      const call = await begin(ctx, req.context, "embeddings", req.body);
      try {
        const input = call.request.input;
        const inputs = typeof input === "string" ? [input] : input;
        if (!Array.isArray(inputs) || inputs.length === 0)
          throw invalid("'input' is required: a string or a non-empty list of strings", "input");
        if (call.request.model !== undefined && typeof call.request.model !== "string") throw invalid("'model' must be a string", "model");
        const { value, watch: w } = await attempt(call, targetsFor(call, "embedding"), ctx.signal, async (t, w) => {
          if (!t.provider.client) {
            inputs.forEach((x, i) => {
              if (typeof x !== "string") throw invalid(`'input[${i}]' must be a string for the local model`, `input[${i}]`);
            });
            const dims = call.request.dimensions;
            return localEmbeddings(
              inputs as string[],
              typeof dims === "number" && Number.isInteger(dims) && dims > 0 && dims <= 4096 ? dims : undefined,
              call.request.encoding_format,
            );
          }
          const resp = (await t.provider.client.json("/embeddings", { ...call.request, model: t.model }, traced(ctx), w)) as Json | null;
          if (!resp || typeof resp !== "object" || !Array.isArray(resp.data)) throw new SyntaxError("the answer is not an embeddings list");
          return resp;
        });
        w.dispose();
        // Vectors are large and derived: the stored response keeps everything else.
        const stored = {
          ...value,
          data: ((value.data as Json[]) ?? []).map((d) => ({
            index: d.index,
            object: d.object,
            dimensions: Array.isArray(d.embedding)
              ? d.embedding.length
              : typeof d.embedding === "string"
                ? Buffer.byteLength(d.embedding, "base64") / 4
                : 0,
          })),
        };
        finish(call, { response: stored, usage: value.usage });
        return { response: value as JsonObject, callId: call.id };
      } catch (e) {
        finish(call, { error: e });
        throw e;
      }
    },

    async listModels(_req, ctx) {
      requireAccount(await auth.identify(ctx.requestHeader));
      return { models: listModels(cfg) };
    },

    async listCalls(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      const accountId = requireAccount(identity);
      if (req.offset < 0) throw invalid("offset must be 0 or more", "offset");
      const limit = checkCallLimit(req.limit);
      refuseNul({ session_id: req.sessionId, run_id: req.runId, workflow_ref_name: req.workflowRefName });
      // Read your writes: whatever is pending is written before the query.
      await recorder.flush();
      const rows = await store.listCalls({
        accountId,
        // A run token sees its own session's calls only.
        sessionId: identity.kind === "run" ? identity.claims.session : req.sessionId || undefined,
        runId: req.runId || undefined,
        workflowRefName: req.workflowRefName || undefined,
        offset: req.offset,
        limit,
      });
      return { calls: rows.map((r) => callMessage(r, req.includeBodies)) };
    },

    async getMetrics(_req, ctx) {
      // Server-wide counters: no account's data, but every account's activity, so for operators only.
      requireAdmin(await auth.identify(ctx.requestHeader), "read the server's metrics");
      const c = recorder.counters();
      return {
        calls: metrics.calls,
        upstreamAttempts: metrics.attempts,
        callsRecorded: c.recorded,
        callsPending: c.pending,
        callsDropped: c.dropped,
      };
    },
  };

  return {
    impl,
    routes: (router) => router.service(ModelProxyService, impl),
    close: () => recorder.flush(),
  };
}

function collect(
  acc: { id: string; model: string; content: string; toolCalls: Json[]; finish: unknown; usage: unknown },
  chunk: Json,
): void {
  if (typeof chunk.id === "string" && !acc.id) acc.id = chunk.id;
  if (typeof chunk.model === "string" && !acc.model) acc.model = chunk.model;
  if (chunk.usage) acc.usage = chunk.usage;
  const choice = Array.isArray(chunk.choices) ? (chunk.choices[0] as Json | undefined) : undefined;
  if (!choice) return;
  if (choice.finish_reason) acc.finish = choice.finish_reason;
  const delta = (choice.delta ?? {}) as Json;
  if (typeof delta.content === "string") acc.content += delta.content;
  if (Array.isArray(delta.tool_calls)) {
    for (const tc of delta.tool_calls as Json[]) {
      const index = typeof tc.index === "number" ? tc.index : 0;
      const fn = (tc.function ?? {}) as Json;
      const have = acc.toolCalls[index] as { id?: unknown; type?: unknown; function: { name: string; arguments: string } } | undefined;
      if (!have) {
        acc.toolCalls[index] = { id: tc.id, type: tc.type ?? "function", function: { name: fn.name ?? "", arguments: fn.arguments ?? "" } };
      } else {
        if (typeof fn.name === "string") have.function.name += fn.name;
        if (typeof fn.arguments === "string") have.function.arguments += fn.arguments;
      }
    }
  }
}

function callMessage(r: CallRow, bodies: boolean): MessageInitShape<typeof ModelCallSchema> {
  return {
    callId: r.id,
    accountId: r.accountId,
    sessionId: r.sessionId,
    runId: r.runId,
    workflowRefName: r.workflowRefName,
    intent: r.intent,
    application: r.application,
    kind: r.kind,
    model: r.model,
    provider: r.provider,
    attempts: r.attempts,
    status: r.status,
    error: r.error,
    latencyMs: r.latencyMs,
    ttftMs: r.ttftMs,
    promptTokens: r.promptTokens,
    completionTokens: r.completionTokens,
    totalTokens: r.promptTokens + r.completionTokens,
    request: bodies && r.request ? (r.request as JsonObject) : undefined,
    response: bodies && r.response ? (r.response as JsonObject) : undefined,
    createdAt: timestampOf(r.createdAt),
  };
}
