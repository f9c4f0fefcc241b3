// What the routes that run a workflow as a model share (POST /v1/chat/completions and POST
// /v1/responses): the workflow model name, the Invocation built from a request, starting its run,
// and the text of its answer.
import { createHash } from "node:crypto";
import type { JsonObject, JsonValue, MessageInitShape } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { InvocationSchema, RunResult, RunStarted, RunStreamResponse } from "../../gen/shaker/executor/v1/executor_pb.js";
import { idempotencyKeyProblem } from "../executor/rules.js";
import type { Clients } from "../shared/clients.js";
import { toValue } from "../shared/json.js";
import { namePattern } from "../shared/names.js";
import { disconnectSignal, HttpError, type Req, type Res } from "./http.js";

const workflowModel = new RegExp(`^workflow:(${namePattern.source.slice(1, -1)})(?:@(\\d+\\.\\d+\\.\\d+))?$`);

/** WorkflowRef is the workflow a model name runs: its reference and pinned version ("" for the latest published). */
export interface WorkflowRef {
  ref: string;
  version: string;
}

/**
 * workflowOf reads a model name: the workflow it runs, or undefined for a plain model (one without
 * `workflow:`). A malformed `workflow:…` name is a 400.
 */
export function workflowOf(model: string): WorkflowRef | undefined {
  const match = workflowModel.exec(model);
  if (match) return { ref: match[1], version: match[2] ?? "" };
  if (model.startsWith("workflow:")) {
    throw new HttpError(
      400,
      `'model' must be 'workflow:<ref>' or 'workflow:<ref>@<major.minor.patch>' with ref matching ${namePattern.source}, got ${JSON.stringify(model)}`,
      "model",
      "invalid_model",
    );
  }
  return undefined;
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

/** InvocationParts are what a route read from its request body. */
export interface InvocationParts {
  /** messages become ctx.messages. */
  messages: JsonObject[];
  /** input becomes ctx.input; undefined when the request sent none. */
  input?: unknown;
  sessionId?: string;
  secrets?: Record<string, string>;
  metadata?: Record<string, unknown>;
  /** params become ctx.params; `stream` is set on them. */
  params: Record<string, unknown>;
  stream: boolean;
}

/**
 * invocationOf builds the Executor's Invocation. `hashed` is what identifies the request for
 * retries and Idempotency-Key (the body as sent, tagged with its route when two routes could send
 * the same body for different runs).
 */
export function invocationOf(
  req: Req,
  workflow: WorkflowRef,
  parts: InvocationParts,
  hashed: Record<string, unknown>,
): MessageInitShape<typeof InvocationSchema> {
  const hasInput = parts.input !== undefined;
  return {
    workflowRefName: workflow.ref,
    version: workflow.version,
    input: hasInput ? toValue(parts.input) : undefined,
    hasInput,
    messages: parts.messages,
    secrets: parts.secrets ?? {},
    metadata: (parts.metadata ?? {}) as JsonObject,
    params: { ...parts.params, stream: parts.stream } as JsonObject,
    sessionId: parts.sessionId ?? "",
    ...retryFields(req, hashed),
  };
}

/** StartedRun is a run the Executor started, with the rest of its events to read. */
export interface StartedRun {
  started: RunStarted;
  events: AsyncIterator<RunStreamResponse>;
  /** signal is aborted when the caller goes away. */
  signal: AbortSignal;
  /** created is the run's creation time in Unix seconds: every caller of the same run gets the same. */
  created: number;
}

/**
 * startRun asks the Executor for a run and waits for it to start. Every error that can be known
 * before the run starts (authentication, unknown workflow, INPUT_SCHEMA, limits) is thrown here, so
 * the route answers it with its status.
 */
export async function startRun(
  clients: Clients,
  res: Res,
  headers: Record<string, string>,
  invocation: MessageInitShape<typeof InvocationSchema>,
): Promise<StartedRun> {
  const signal = disconnectSignal(res);
  const events = clients.executor.runStream({ invocation }, { headers, signal })[Symbol.asyncIterator]();
  const first = await events.next();
  if (first.done || first.value.event.case !== "started") throw new HttpError(502, "the Executor ended the run before starting it");
  const started = first.value.event.value;
  const created = Math.floor((started.createdAt ? timestampMs(started.createdAt) : Date.now()) / 1000);
  return { started, events, signal, created };
}

/**
 * resultOf reads a started run's events to its end: its result, or the error it failed with (a
 * 502 when it ended without either).
 */
export async function resultOf(events: AsyncIterator<RunStreamResponse>): Promise<RunResult> {
  let result: RunResult | undefined;
  for (let next = await events.next(); !next.done; next = await events.next()) {
    if (next.value.event.case === "result") result = next.value.event.value;
  }
  if (!result) throw new HttpError(502, "the run ended without a result");
  return result;
}

/** contentOf is a value as message text: a string as it is, anything else as its JSON text. */
export function contentOf(value: JsonValue): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Usage is a run's token usage (its model calls and those of its nested runs). */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** usageOf is a run result's usage in the chat completions shape. */
export function usageOf(result: RunResult): Usage {
  return {
    prompt_tokens: result.usage?.promptTokens ?? 0,
    completion_tokens: result.usage?.completionTokens ?? 0,
    total_tokens: result.usage?.totalTokens ?? 0,
  };
}

/** outputSeparator comes between the emitted values and the output text when the output is not their continuation. */
export const outputSeparator = "\n\n";

/**
 * StreamedText follows the text a stream has sent for its emitted values, so that the output text
 * can be added after them by one rule (docs/api.md §3, "The stream's text"):
 *
 * - when the emitted values' texts, glued together, are the beginning of the output's text
 *   (nothing emitted included, and the whole output emitted included), only the rest of the output
 *   text is sent, so the stream's text is exactly the output's text;
 * - otherwise (progress such as "searching…" followed by an answer), the output text is sent after
 *   a blank line: the stream's text is the emitted text, "\n\n", then the output text;
 * - nothing is sent when that would be empty.
 *
 * Only a running hash of the emitted text is kept, never the text itself.
 */
export class StreamedText {
  private readonly hash = createHash("sha256");
  private length = 0;

  /** add counts text sent for an emitted value. */
  add(text: string): void {
    this.hash.update(text);
    this.length += text.length;
  }

  /** rest is the text to send after the emitted values for an output of text `output` ("" for nothing). */
  rest(output: string): string {
    if (this.length === 0) return output;
    const isPrefix =
      this.length <= output.length &&
      createHash("sha256").update(output.slice(0, this.length)).digest("hex") === this.hash.copy().digest("hex");
    if (isPrefix) return output.slice(this.length);
    return output === "" ? "" : outputSeparator + output;
  }
}
