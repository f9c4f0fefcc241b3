import { readFileSync } from "node:fs";
import { CliError, errorOf, need, parse, printJson, send, serverOf, textOf } from "./http.js";
import type { CliIo } from "./io.js";

export const invokeUsage = `usage: shaker invoke REF [--input JSON|@FILE] [--message TEXT] [--stream] [--session ID]
                    [--secret NAME=VALUE]... [--server URL] [--api-key KEY]
  REF is a workflow reference name, optionally REF@VERSION. Emitted values go to stderr as they
  arrive (with --stream); the final output is printed as JSON on stdout.`;

function inputOf(raw: string): unknown {
  let text = raw;
  if (raw.startsWith("@")) {
    try {
      text = readFileSync(raw.slice(1), "utf8");
    } catch (e) {
      throw new CliError(`cannot read --input file ${raw.slice(1)}: ${(e as Error).message}`);
    }
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CliError(`--input is not JSON (${(e as Error).message}); quote it, e.g. --input '{"name": "Ada"}'`, 2);
  }
}

/** sseEvents yields the `data:` payloads of a Server-Sent Events body. */
export async function* sseEvents(body: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

/** runInvoke calls a workflow through POST /v1/chat/completions. */
export async function runInvoke(argv: string[], io: CliIo): Promise<void> {
  const { values, positionals } = parse(
    argv,
    {
      input: { type: "string" },
      message: { type: "string" },
      stream: { type: "boolean" },
      session: { type: "string" },
      secret: { type: "string", multiple: true },
    },
    invokeUsage,
  );
  const server = serverOf(values, io.env);
  const ref = need(positionals, 0, "REF", invokeUsage).replace(/^workflow:/, "");
  const body: Record<string, unknown> = { model: `workflow:${ref}` };
  if (values.input !== undefined) body.input = inputOf(values.input);
  if (values.message !== undefined) body.messages = [{ role: "user", content: values.message }];
  if (body.input === undefined && body.messages === undefined) body.input = {};
  if (values.session) body.session_id = values.session;
  if (values.stream) body.stream = true;
  if (values.secret) {
    body.secrets = Object.fromEntries(
      values.secret.map((s) => {
        const at = s.indexOf("=");
        if (at <= 0) throw new CliError(`--secret '${s.split("=")[0]}' must be NAME=VALUE`, 2);
        return [s.slice(0, at), s.slice(at + 1)];
      }),
    );
  }
  const res = await send(server, "POST", "/v1/chat/completions", { body });
  if (!res.ok) throw await errorOf(res);
  if (res.status === 202) {
    const accepted = (await res.json()) as Record<string, unknown>;
    io.stderr(`accepted: the run continues in the background; see it with: shaker runs show ${String(accepted.run_id ?? "")}\n`);
    printJson(io, accepted);
    return;
  }
  if (!values.stream || !(res.headers.get("content-type") ?? "").includes("text/event-stream")) {
    const completion = (await res.json()) as Record<string, unknown>;
    io.stderr(`run ${String(completion.run_id)} (session ${String(completion.session_id)})\n`);
    printJson(io, completion.output);
    return;
  }
  let finished = false;
  for await (const data of sseEvents(res.body)) {
    if (data === "[DONE]") break;
    let event: any;
    try {
      event = JSON.parse(data);
    } catch {
      continue;
    }
    if (event.error) throw new CliError(`the run failed: ${event.error.message ?? JSON.stringify(event.error)}`);
    if ("emitted" in event) {
      io.stderr(`» ${textOf(event.emitted)}\n`);
      continue;
    }
    if (event.choices?.[0]?.finish_reason === "stop") {
      finished = true;
      io.stderr(`run ${String(event.run_id)} (session ${String(event.session_id)})\n`);
      printJson(io, event.output);
    }
  }
  if (!finished) throw new CliError("the stream ended before the run finished");
}
