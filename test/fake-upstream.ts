// A fake OpenAI-compatible model server: a real HTTP server on a free port that answers
// /v1/chat/completions (plain and streamed, with tool calls), /v1/embeddings and /v1/models, and
// can be told to fail, hang, answer malformed JSON or go slow, per model, request by request.
import { writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";

/** Step is how the fake answers one request for a model. */
export type Step =
  | { status: number; body?: string; retryAfter?: number }
  | { hang: true }
  | { malformed: true }
  /** streamBreak sends a few chunks, then malformed data. */
  | { streamBreak: true }
  /** streamStall sends a few chunks, then nothing more (the connection stays open). */
  | { streamStall: true }
  | { delayMs: number };

/** Received is one request the fake got. */
export interface Received {
  path: string;
  body: any;
  headers: IncomingMessage["headers"];
}

/** FakeUpstream is a running fake model server. */
export interface FakeUpstream {
  /** url is the base URL to configure, ending in /v1. */
  url: string;
  /** requests are every request received, oldest first. */
  requests: Received[];
  /** plan queues steps for a model; once they are used up, the model answers normally. */
  plan(model: string, steps: Step[]): void;
  /** chunkDelayMs spaces streamed chunks (default 0). */
  chunkDelayMs: number;
  /** abandoned counts streams whose client went away before the stream ended. */
  abandoned: number;
  close(): Promise<void>;
}

function words(body: any): string[] {
  const messages = Array.isArray(body?.messages) ? body.messages : [];
  const last = [...messages].reverse().find((m: any) => m?.role === "user" || m?.role === "tool");
  const text = typeof last?.content === "string" ? last.content : "";
  return `Echo: ${text}`.split(/\s+/).filter(Boolean);
}

/** Options of startFakeUpstream. */
export interface FakeUpstreamOptions {
  /**
   * keepRequests bounds `requests` to the latest so many (default: all). Benchmarks keep none: a
   * log growing by every request lives in the heap it measures, and each young-generation GC
   * copies its newest entries (5 ms pauses that were read as the proxy's p99).
   */
  keepRequests?: number;
}

/** startFakeUpstream starts the fake on 127.0.0.1 and a free port. */
export async function startFakeUpstream(options: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const keep = options.keepRequests ?? Number.POSITIVE_INFINITY;
  const plans = new Map<string, Step[]>();
  const requests: Received[] = [];
  const open = new Set<ServerResponse>();
  let counter = 0;
  const fake: FakeUpstream = {
    url: "",
    requests,
    chunkDelayMs: 0,
    abandoned: 0,
    plan(model, steps) {
      plans.set(model, [...(plans.get(model) ?? []), ...steps]);
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const res of open) res.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };

  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    const data = typeof body === "string" ? body : JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": String(Buffer.byteLength(data)), ...headers });
    res.end(data);
  };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    let body: any = {};
    try {
      body = text ? JSON.parse(text) : {};
    } catch {
      return json(res, 400, { error: { message: "bad json", type: "invalid_request_error" } });
    }
    const path = (req.url ?? "").replace(/\?.*$/, "");
    if (keep > 0) {
      requests.push({ path, body, headers: req.headers });
      if (requests.length > keep) requests.shift();
    }
    if (req.method === "GET" && path.endsWith("/models")) {
      return json(res, 200, { object: "list", data: [{ id: "fake-model", object: "model", created: 0, owned_by: "fake" }] });
    }
    const model = String(body.model ?? "");
    const step = plans.get(model)?.shift();
    if (step && "delayMs" in step) await sleep(step.delayMs);
    if (step && "hang" in step) {
      open.add(res);
      return; // never answers
    }
    if (step && "status" in step) {
      return json(
        res,
        step.status,
        step.body ?? { error: { message: `planned failure ${step.status}`, type: "server_error" } },
        step.retryAfter !== undefined ? { "retry-after": String(step.retryAfter) } : {},
      );
    }
    if (step && "malformed" in step) {
      return json(res, 200, '{"id": "chatcmpl-broken", "choices": [ {"message": ');
    }
    const id = `chatcmpl-fake-${++counter}`;
    const created = Math.floor(Date.now() / 1000);
    if (path.endsWith("/embeddings")) {
      const inputs: string[] = typeof body.input === "string" ? [body.input] : body.input;
      return json(res, 200, {
        object: "list",
        model,
        data: inputs.map((t, index) => {
          const vector = [t.length, 1, 0, 0.5];
          const embedding = body.encoding_format === "base64" ? Buffer.from(new Float32Array(vector).buffer).toString("base64") : vector;
          return { object: "embedding", index, embedding };
        }),
        usage: { prompt_tokens: inputs.length, total_tokens: inputs.length },
      });
    }
    if (!path.endsWith("/chat/completions")) return json(res, 404, { error: { message: "no such route" } });
    const tool =
      Array.isArray(body.tools) && body.tools.length > 0 && body.messages?.at(-1)?.role !== "tool"
        ? body.tools[0].function.name
        : undefined;
    const out = words(body);
    const promptTokens = JSON.stringify(body.messages ?? []).length;
    const usage = { prompt_tokens: promptTokens, completion_tokens: out.length, total_tokens: promptTokens + out.length };
    const toolCall = tool
      ? { id: "call_fake_1", type: "function", function: { name: tool, arguments: JSON.stringify({ query: "fake" }) } }
      : undefined;
    if (!body.stream) {
      return json(res, 200, {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [
          {
            index: 0,
            message: toolCall
              ? { role: "assistant", content: null, tool_calls: [toolCall] }
              : { role: "assistant", content: out.join(" ") },
            finish_reason: toolCall ? "tool_calls" : "stop",
            logprobs: null,
          },
        ],
        usage,
      });
    }
    open.add(res);
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.once("close", () => {
      if (!res.writableFinished) fake.abandoned++;
    });
    const send = async (data: unknown) => {
      if (res.destroyed) return;
      res.write(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
      if (fake.chunkDelayMs > 0) await sleep(fake.chunkDelayMs);
    };
    const chunk = (delta: unknown, finish: string | null) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model,
      choices: [{ index: 0, delta, finish_reason: finish }],
    });
    await send(chunk({ role: "assistant", content: "" }, null));
    if (toolCall) {
      await send(chunk({ tool_calls: [{ index: 0, id: toolCall.id, type: "function", function: { name: tool, arguments: "" } }] }, null));
      await send(chunk({ tool_calls: [{ index: 0, function: { arguments: toolCall.function.arguments } }] }, null));
    } else {
      for (const [i, w] of out.entries()) {
        await send(chunk({ content: i === 0 ? w : ` ${w}` }, null));
        if (step && "streamBreak" in step && i === 1) {
          await send("{not json");
          break;
        }
        if (step && "streamStall" in step && i === 1) return;
      }
    }
    await send(chunk({}, toolCall ? "tool_calls" : "stop"));
    if (body.stream_options?.include_usage) await send({ id, object: "chat.completion.chunk", created, model, choices: [], usage });
    res.write("data: [DONE]\n\n");
    res.end();
    open.delete(res);
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent) json(res, 500, { error: { message: String(e) } });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  fake.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  return fake;
}

/**
 * writeFakeModelsConfig writes a SHAKER_MODELS_CONFIG file in `dir` that routes to `upstream`: a
 * provider "fake", a model "primary" falling back to "backup", these routes, and fast retries.
 */
export function writeFakeModelsConfig(dir: string, upstream: FakeUpstream, routes: Record<string, unknown>): string {
  const file = join(dir, "models.json");
  writeFileSync(
    file,
    JSON.stringify({
      providers: { fake: { base_url: upstream.url, api_key: "sk-upstream", timeout_ms: 400, max_retries: 2 } },
      models: {
        primary: { provider: "fake", model: "m-primary", fallbacks: ["backup"] },
        backup: { provider: "fake", model: "m-backup" },
      },
      routes,
      default_provider: "fake",
      default_model: "m-default",
      default_embedding_model: "e-default",
      retry_backoff_ms: 5,
    }),
  );
  return file;
}
