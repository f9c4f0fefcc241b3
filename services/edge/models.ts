import type { JsonObject } from "@bufbuild/protobuf";
import type { Clients } from "../shared/clients.js";
import { field, HttpError, sendJson, toErrorBody, type Res } from "./http.js";

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
  const sessionId = field.string(body, "session_id") ?? "";
  const { session_id: _s, secrets: _x, metadata: _m, ...openaiBody } = body;
  const context = { sessionId };
  const abort = new AbortController();
  res.once("close", () => abort.abort());
  if (!stream) {
    const resp = await clients.modelproxy.chatCompletion({ body: openaiBody as JsonObject, context }, { headers, signal: abort.signal });
    sendJson(res, 200, resp.completion ?? {}, { "x-request-id": resp.callId });
    return;
  }
  const events = clients.modelproxy.chatCompletionStream({ body: openaiBody as JsonObject, context }, { headers, signal: abort.signal })[
    Symbol.asyncIterator
  ]();
  const first = await events.next();
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
    ...(first.done ? {} : { "x-request-id": first.value.callId }),
  });
  try {
    for (let next = first; !next.done; next = await events.next()) {
      if (!res.write(`data: ${JSON.stringify(next.value.chunk ?? {})}\n\n`)) {
        await new Promise<void>((resolve) => res.once("drain", resolve));
      }
    }
    res.write("data: [DONE]\n\n");
  } catch (err) {
    if (!abort.signal.aborted) res.write(`data: ${JSON.stringify(toErrorBody(err).body)}\n\n`);
  } finally {
    res.end();
  }
}
