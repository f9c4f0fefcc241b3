import { CliError, call, ms, need, parse, printJson, serverOf, table, textOf } from "./http.js";
import type { CliIo } from "./io.js";

export const runsUsage = `usage: shaker runs [--workflow REF] [--session ID] [--status S] [--limit N] [--json]
       shaker runs show ID [--json]
  S is one of queued, running, succeeded, failed, timed_out, cancelled.`;

/** time shows an RFC 3339 timestamp as local-free UTC seconds. */
function time(ts: unknown): string {
  return typeof ts === "string" && ts ? ts.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-";
}

function showRun(run: any): string {
  const out: string[] = [];
  out.push(`run       ${run.run_id}`);
  out.push(`workflow  ${run.workflow_ref_name}@${run.version}`);
  out.push(`status    ${run.status}`);
  out.push(`session   ${run.session_id}`);
  if (run.parent_run_id) out.push(`parent    ${run.parent_run_id} (depth ${run.depth})`);
  out.push(`created   ${time(run.created_at)}`);
  out.push(`started   ${time(run.started_at)}`);
  out.push(`finished  ${time(run.finished_at)}`);
  out.push(`duration  ${ms(run.duration_ms)}`);
  if (run.usage) out.push(`tokens    ${run.usage.prompt_tokens ?? 0} prompt + ${run.usage.completion_tokens ?? 0} completion`);
  out.push(`input     ${JSON.stringify(run.input ?? null)}`);
  if (run.output !== undefined && run.output !== null) out.push(`output    ${JSON.stringify(run.output)}`);
  if (run.error && (run.error.type || run.error.message)) {
    out.push(`error     ${run.error.type}: ${run.error.message}`);
    if (run.error.traceback)
      out.push(
        ...String(run.error.traceback)
          .trimEnd()
          .split("\n")
          .map((l) => `  ${l}`),
      );
  }
  for (const w of run.warnings ?? []) out.push(`warning   ${w}`);
  const emitted = run.emitted ?? [];
  out.push(`\nemitted (${emitted.length})`);
  for (const e of emitted) out.push(`  ${time(e.time)}  ${textOf(e.value)}`);
  const logs = run.logs ?? [];
  out.push(`\nlogs (${logs.length})`);
  for (const l of logs) {
    const fields = l.fields && Object.keys(l.fields).length ? ` ${JSON.stringify(l.fields)}` : "";
    out.push(`  ${time(l.time)}  ${String(l.level).padEnd(7)} ${l.message}${fields}`);
  }
  const calls = run.model_calls ?? [];
  out.push(`\nmodel calls (${calls.length})`);
  if (calls.length) {
    out.push(
      table(
        ["model", "kind", "intent", "status", "latency", "tokens"],
        calls.map((c: any) => [
          `${c.provider ? c.provider + "/" : ""}${c.model}`,
          c.kind,
          c.intent || "-",
          c.status + (c.error ? `: ${c.error}` : ""),
          ms(c.latency_ms),
          String(c.total_tokens ?? 0),
        ]),
      )
        .trimEnd()
        .split("\n")
        .map((l) => `  ${l}`)
        .join("\n"),
    );
  }
  const http = run.http_calls ?? [];
  if (http.length) {
    out.push(`\nhttp calls (${http.length})`);
    for (const h of http) out.push(`  ${h.method} ${h.host} → ${h.status} ${ms(h.duration_ms)}`);
  }
  return out.join("\n") + "\n";
}

/** runRuns lists run records, or shows one. */
export async function runRuns(argv: string[], io: CliIo): Promise<void> {
  const { values, positionals } = parse(
    argv,
    {
      workflow: { type: "string" },
      session: { type: "string" },
      status: { type: "string" },
      limit: { type: "string" },
      json: { type: "boolean" },
    },
    runsUsage,
  );
  const server = serverOf(values, io.env);
  if (positionals[0] === "show") {
    const id = need(positionals, 1, "ID", runsUsage);
    const resp = await call(server, "GET", `/v1/runs/${encodeURIComponent(id)}`);
    if (values.json) printJson(io, resp.data);
    else io.stdout(showRun(resp.data));
    return;
  }
  if (positionals.length > 0) throw new CliError(`unknown runs subcommand '${positionals[0]}'\n${runsUsage}`, 2);
  const q = new URLSearchParams();
  if (values.workflow) q.set("workflow", values.workflow);
  if (values.session) q.set("session_id", values.session);
  if (values.status) q.set("status", values.status);
  if (values.limit) q.set("limit", values.limit);
  const resp = await call(server, "GET", `/v1/runs${q.size ? "?" + q : ""}`);
  const runs: any[] = resp.data;
  if (values.json) return printJson(io, runs);
  if (runs.length === 0) {
    io.stdout("no runs\n");
    return;
  }
  io.stdout(
    table(
      ["RUN", "WORKFLOW", "STATUS", "DURATION", "CREATED", "SESSION"],
      runs.map((r) => [r.run_id, `${r.workflow_ref_name}@${r.version}`, r.status, ms(r.duration_ms), time(r.created_at), r.session_id]),
    ),
  );
}
