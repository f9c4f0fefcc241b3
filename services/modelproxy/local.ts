// The built-in `local` provider: an offline, deterministic stand-in for a model. It is not a
// language model: it answers with a fixed sentence built from the last user message, calls the
// first offered tool (arguments built from the tool's JSON schema and the user's text), and embeds
// text by feature hashing, so workflows, agents and vector search can be exercised without a network.
import { createHash } from "node:crypto";

/** LOCAL_MODEL is the name the local provider answers with in every response. */
export const LOCAL_MODEL = "shaker-local";
/** LOCAL_EMBEDDING_DIMENSIONS is the size of local embeddings. */
export const LOCAL_EMBEDDING_DIMENSIONS = 384;

type Json = Record<string, unknown>;

function textOf(content: unknown): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((part) => (part && typeof part === "object" && typeof (part as Json).text === "string" ? ((part as Json).text as string) : ""))
      .filter(Boolean)
      .join(" ");
  }
  return content === null || content === undefined ? "" : JSON.stringify(content);
}

/** tokensOf splits text into lower-case word tokens (letters and digits of any script). */
export function tokensOf(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
}

function countTokens(messages: Json[]): number {
  return messages.reduce((n, m) => n + tokensOf(textOf(m.content)).length + 1, 0);
}

function hashOf(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** valueFor builds a value of a JSON schema from the user's text. */
function valueFor(schema: Json | undefined, text: string): unknown {
  const s = schema ?? {};
  if (Array.isArray(s.enum) && s.enum.length > 0) return s.enum[0];
  const number = /-?\d+(?:\.\d+)?/.exec(text);
  switch (s.type) {
    case "integer":
      return number ? Math.trunc(Number(number[0])) : 0;
    case "number":
      return number ? Number(number[0]) : 0;
    case "boolean":
      return true;
    case "array":
      return [valueFor(s.items as Json | undefined, text)];
    case "object": {
      const out: Json = {};
      for (const [k, v] of Object.entries((s.properties as Record<string, Json> | undefined) ?? {})) out[k] = valueFor(v, text);
      return out;
    }
    default:
      return text;
  }
}

interface Tool {
  name: string;
  parameters: Json | undefined;
}

function toolsOf(body: Json): Tool[] {
  if (!Array.isArray(body.tools)) return [];
  return body.tools
    .map((t) => (t && typeof t === "object" ? ((t as Json).function as Json | undefined) : undefined))
    .filter((f): f is Json => !!f && typeof f.name === "string")
    .map((f) => ({ name: f.name as string, parameters: f.parameters as Json | undefined }));
}

/** Answer is what the local model decided to say: text or one tool call. */
interface Answer {
  content: string | null;
  toolCall: { id: string; name: string; arguments: string } | undefined;
  finish: "stop" | "length" | "tool_calls";
  promptTokens: number;
  words: string[];
}

function answer(body: Json): Answer {
  const messages = (Array.isArray(body.messages) ? body.messages : []).filter((m): m is Json => !!m && typeof m === "object");
  const promptTokens = countTokens(messages);
  const lastUser = [...messages].reverse().find((m) => m.role === "user");
  const userText = textOf(lastUser?.content).trim();
  const last = messages[messages.length - 1];
  const tools = toolsOf(body);
  const choice = body.tool_choice;
  if (tools.length > 0 && choice !== "none" && last?.role !== "tool") {
    const named = choice && typeof choice === "object" ? ((choice as Json).function as Json | undefined)?.name : undefined;
    const tool = tools.find((t) => t.name === named) ?? tools[0];
    const props = (tool.parameters?.properties as Record<string, Json> | undefined) ?? {};
    const required = Array.isArray(tool.parameters?.required) ? (tool.parameters!.required as string[]) : Object.keys(props);
    const args: Json = {};
    for (const name of required) args[name] = valueFor(props[name], userText);
    const argText = JSON.stringify(args);
    return {
      content: null,
      toolCall: { id: `call_${hashOf(tool.name + argText + messages.length).slice(0, 24)}`, name: tool.name, arguments: argText },
      finish: "tool_calls",
      promptTokens,
      words: tokensOf(argText),
    };
  }
  let text: string;
  if (last?.role === "tool") {
    text = `The tool returned: ${textOf(last.content)}`;
  } else {
    text = userText
      ? `This is ${LOCAL_MODEL}, an offline stand-in model. You said: ${userText}`
      : `This is ${LOCAL_MODEL}, an offline stand-in model.`;
  }
  let words = text.split(/\s+/).filter(Boolean);
  const max = Number(body.max_completion_tokens ?? body.max_tokens);
  let finish: Answer["finish"] = "stop";
  if (Number.isInteger(max) && max >= 0 && words.length > max) {
    words = words.slice(0, max);
    finish = "length";
  }
  const format = body.response_format as Json | undefined;
  if (format && (format.type === "json_object" || format.type === "json_schema") && finish === "stop") {
    const json = JSON.stringify({ answer: words.join(" ") });
    return { content: json, toolCall: undefined, finish, promptTokens, words: [json] };
  }
  return { content: words.join(" "), toolCall: undefined, finish, promptTokens, words };
}

function idOf(body: Json): string {
  return `chatcmpl-local-${hashOf(JSON.stringify(body.messages ?? [])).slice(0, 24)}`;
}

function usageOf(a: Answer) {
  const completion = a.toolCall ? a.words.length : a.words.length;
  return { prompt_tokens: a.promptTokens, completion_tokens: completion, total_tokens: a.promptTokens + completion };
}

/** localChat answers a chat.completions request as the local model. */
export function localChat(body: Json): Json {
  const a = answer(body);
  const message: Json = { role: "assistant", content: a.content, refusal: null };
  if (a.toolCall) {
    message.tool_calls = [{ id: a.toolCall.id, type: "function", function: { name: a.toolCall.name, arguments: a.toolCall.arguments } }];
  }
  return {
    id: idOf(body),
    object: "chat.completion",
    created: Math.floor(Date.now() / 1000),
    model: LOCAL_MODEL,
    choices: [{ index: 0, message, finish_reason: a.finish, logprobs: null }],
    usage: usageOf(a),
    system_fingerprint: "shaker-local",
  };
}

/** localChatStream answers a streamed request as the local model: one chunk a word, usage last when asked for. */
export async function* localChatStream(body: Json, signal?: AbortSignal): AsyncGenerator<Json> {
  const a = answer(body);
  const id = idOf(body);
  const created = Math.floor(Date.now() / 1000);
  const chunk = (delta: Json, finish: string | null): Json => ({
    id,
    object: "chat.completion.chunk",
    created,
    model: LOCAL_MODEL,
    choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
  });
  yield chunk({ role: "assistant", content: a.toolCall ? null : "" }, null);
  if (a.toolCall) {
    yield chunk(
      {
        tool_calls: [
          { index: 0, id: a.toolCall.id, type: "function", function: { name: a.toolCall.name, arguments: a.toolCall.arguments } },
        ],
      },
      null,
    );
  } else {
    for (let i = 0; i < a.words.length; i++) {
      if (signal?.aborted) return;
      // Yield to the event loop between words, as a real upstream's chunks arrive one by one.
      await new Promise<void>((resolve) => setImmediate(resolve));
      yield chunk({ content: i === 0 ? a.words[i] : ` ${a.words[i]}` }, null);
    }
  }
  yield chunk({}, a.finish);
  const options = body.stream_options as Json | undefined;
  if (options?.include_usage === true) {
    yield { id, object: "chat.completion.chunk", created, model: LOCAL_MODEL, choices: [], usage: usageOf(a) };
  }
}

/**
 * localEmbedding embeds text by feature hashing: each word token (and each pair of neighbouring
 * tokens) adds ±1 to one of `dimensions` buckets chosen by its hash; the vector is L2-normalised.
 * Texts sharing words get a high cosine similarity, so vector search behaves like keyword search.
 */
export function localEmbedding(text: string, dimensions = LOCAL_EMBEDDING_DIMENSIONS): number[] {
  const vector = new Array<number>(dimensions).fill(0);
  const tokens = tokensOf(text);
  const add = (feature: string, weight: number) => {
    const h = createHash("md5").update(feature).digest();
    const bucket = h.readUInt32LE(0) % dimensions;
    vector[bucket] += (h[4] & 1 ? 1 : -1) * weight;
  };
  tokens.forEach((t, i) => {
    add(t, 1);
    if (i > 0) add(`${tokens[i - 1]} ${t}`, 0.5);
  });
  const norm = Math.sqrt(vector.reduce((s, v) => s + v * v, 0));
  return norm === 0 ? vector : vector.map((v) => v / norm);
}

/** localEmbeddings answers an embeddings request as the local model. */
export function localEmbeddings(inputs: string[], dimensions?: number, encoding?: unknown): Json {
  const data = inputs.map((text, index) => {
    const vector = localEmbedding(text, dimensions);
    // The openai clients ask for base64 (little-endian float32) by default and decode it themselves.
    const embedding = encoding === "base64" ? Buffer.from(new Float32Array(vector).buffer).toString("base64") : vector;
    return { object: "embedding", index, embedding };
  });
  const tokens = inputs.reduce((n, t) => n + tokensOf(t).length, 0);
  return { object: "list", data, model: LOCAL_MODEL, usage: { prompt_tokens: tokens, total_tokens: tokens } };
}
