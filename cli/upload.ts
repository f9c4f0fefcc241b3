import { readFileSync } from "node:fs";
import { basename, extname } from "node:path";
import { executionModes, versionBumps } from "../services/registry/rules.js";
import { nameMaxLength } from "../services/shared/names.js";
import { runPythonJson } from "../services/shared/python.js";
import { ApiError, CliError, call, need, parse, type Server, serverOf } from "./http.js";
import type { CliIo } from "./io.js";

/** ScriptError is one validation finding: 1-based line and column (0 when unknown). */
export interface ScriptError {
  line: number;
  column: number;
  message: string;
}

export const uploadUsage = `usage: shaker upload FILE [--name REF] [--accessory KEY=FILE]... [--datastore NAME[:rw]]...
                     [--bump ${Object.keys(versionBumps).join("|")}] [--timeout S] [--mode ${Object.keys(executionModes).join("|")}]
                     [--description TEXT] [--env KEY=VALUE]... [--server URL] [--api-key KEY]`;
export const validateUsage = "usage: shaker validate FILE   (checks a workflow script locally; needs no server)";

const validatorScript = new URL("../services/registry/validate.py", import.meta.url).pathname;

function readScript(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new CliError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
  }
}

/** formatErrors shows each finding as `file:line:column: message`, the source line, and a caret under the column. */
export function formatErrors(file: string, source: string, errors: ScriptError[]): string {
  const lines = source.split(/\r?\n/);
  const out: string[] = [];
  for (const e of errors) {
    out.push(`${file}:${e.line}:${e.column}: ${e.message}`);
    const text = e.line > 0 ? lines[e.line - 1] : undefined;
    if (text === undefined) continue;
    const gutter = String(e.line);
    out.push(`  ${gutter} | ${text}`);
    // Keep tabs so the caret lines up under tab-indented code.
    const pad = text.slice(0, Math.max(0, e.column - 1)).replace(/[^\t]/g, " ");
    out.push(`  ${" ".repeat(gutter.length)} | ${pad}^`);
  }
  return out.join("\n") + "\n";
}

/** errorsInMessage finds the `line L, column C: message` findings the Registry lists in an upload refusal. */
export function errorsInMessage(message: string): ScriptError[] {
  const found: ScriptError[] = [];
  for (const m of message.matchAll(/^line (\d+), column (\d+): (.*)$/gm)) {
    found.push({ line: Number(m[1]), column: Number(m[2]), message: m[3]! });
  }
  return found;
}

/** refNameOf derives a workflow reference name from a file name: `My Flow.py` → `my-flow`. */
export function refNameOf(file: string): string {
  const stem = basename(file, extname(file))
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, "-")
    .replace(/^[^a-z0-9]+/, "")
    .slice(0, nameMaxLength);
  return stem || "workflow";
}

/** runValidate checks a script with the Registry's own validator, locally. */
export async function runValidate(argv: string[], io: CliIo): Promise<void> {
  const { positionals } = parse(argv, {}, validateUsage);
  const file = need(positionals, 0, "FILE", validateUsage);
  const source = readScript(file);
  let result: { errors: ScriptError[] };
  try {
    result = await runPythonJson<{ errors: ScriptError[] }>({
      python: io.env.SHAKER_PYTHON ?? "python3",
      script: validatorScript,
      input: { code: source },
      timeoutMs: 20_000,
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT") throw new CliError(`validate needs python3 (or SHAKER_PYTHON) on the PATH`);
    throw new CliError(`the validator failed: ${err.message.split("\n")[0]}`);
  }
  if (result.errors.length > 0) {
    io.stderr(formatErrors(file, source, result.errors));
    throw new CliError(`${file}: ${result.errors.length} problem${result.errors.length === 1 ? "" : "s"}; not a valid workflow`);
  }
  io.stdout(`${file}: ok\n`);
}

/** oneOf lists the names of a flag's values for a usage error: `a, b or c`. */
function oneOf(values: Record<string, unknown>): string {
  const names = Object.keys(values);
  return `${names.slice(0, -1).join(", ")} or ${names.at(-1)}`;
}

function pairs(values: string[] | undefined, flag: string): [string, string][] {
  return (values ?? []).map((v) => {
    const at = v.indexOf("=");
    if (at <= 0) throw new CliError(`${flag} '${v}' must be KEY=VALUE`, 2);
    return [v.slice(0, at), v.slice(at + 1)];
  });
}

/** runUpload stores a new version of a workflow; refused scripts are shown with a caret under each problem. */
export async function runUpload(argv: string[], io: CliIo): Promise<void> {
  const { values, positionals } = parse(
    argv,
    {
      name: { type: "string" },
      accessory: { type: "string", multiple: true },
      datastore: { type: "string", multiple: true },
      bump: { type: "string" },
      timeout: { type: "string" },
      mode: { type: "string" },
      description: { type: "string" },
      env: { type: "string", multiple: true },
    },
    uploadUsage,
  );
  const server = serverOf(values, io.env);
  const file = need(positionals, 0, "FILE", uploadUsage);
  const source = readScript(file);
  const ref = values.name ?? refNameOf(file);
  const body: Record<string, unknown> = { workflow_ref_name: ref, script: source };
  if (values.bump !== undefined) {
    if (!Object.hasOwn(versionBumps, values.bump)) throw new CliError(`--bump must be ${oneOf(versionBumps)}`, 2);
    body.version_bump = values.bump;
  }
  if (values.mode !== undefined) {
    if (!Object.hasOwn(executionModes, values.mode)) throw new CliError(`--mode must be ${oneOf(executionModes)}`, 2);
    body.execution_mode = values.mode;
  }
  if (values.timeout !== undefined) {
    const t = Number(values.timeout);
    if (!Number.isInteger(t) || t <= 0) throw new CliError(`--timeout must be a whole number of seconds`, 2);
    body.timeout_seconds = t;
  }
  if (values.description !== undefined) body.description = values.description;
  if (values.env) body.env = Object.fromEntries(pairs(values.env, "--env"));
  if (values.accessory) {
    body.accessories = pairs(values.accessory, "--accessory").map(([key, path]) => {
      let text: string;
      try {
        text = readFileSync(path, "utf8");
      } catch (e) {
        throw new CliError(`cannot read accessory ${key} from ${path}: ${(e as Error).message}`);
      }
      try {
        return { key, content: JSON.parse(text) };
      } catch (e) {
        throw new CliError(`accessory ${key}: ${path} is not JSON (${(e as Error).message})`);
      }
    });
  }
  if (values.datastore) {
    body.datastores = values.datastore.map((d) => {
      const [name, access] = d.split(":");
      if (!name || (access !== undefined && access !== "rw" && access !== "ro")) {
        throw new CliError(`--datastore '${d}' must be NAME or NAME:rw`, 2);
      }
      return { name, write: access === "rw" };
    });
  }
  let resp: { data: { workflow_ref_name: string; version: string; created: boolean; unchanged?: boolean } };
  try {
    resp = await call(server, "POST", "/v1/workflows/upload", { body });
  } catch (e) {
    const found = e instanceof ApiError && e.status === 400 ? errorsInMessage(e.serverMessage) : [];
    if (found.length === 0) throw e;
    io.stderr(formatErrors(file, source, found));
    throw new CliError(`${file}: ${found.length} problem${found.length === 1 ? "" : "s"}; the upload was refused`);
  }
  const d = resp.data;
  io.stdout(
    d.unchanged
      ? `workflow ${d.workflow_ref_name} unchanged, still ${d.version}\n`
      : `${d.created ? "created" : "updated"} workflow ${d.workflow_ref_name} version ${d.version}\n`,
  );
  const schema = await inputSchemaOf(server, d.workflow_ref_name, d.version);
  io.stdout(`invoke it: ${invokeHint(d.workflow_ref_name, schema, source)}   (or model "workflow:${d.workflow_ref_name}")\n`);
}

/** inputSchemaOf is the INPUT_SCHEMA the Registry found in a version, or null (none, or it cannot be read). */
async function inputSchemaOf(server: Server, ref: string, version: string): Promise<unknown> {
  try {
    const resp = await call(server, "GET", `/v1/workflows/${encodeURIComponent(ref)}`);
    const versions: { version?: string; input_schema?: unknown }[] = resp?.data?.versions ?? [];
    return versions.find((v) => v.version === version)?.input_schema ?? null;
  } catch {
    return null;
  }
}

/** placeholders are example values of each INPUT_SCHEMA type. */
const placeholders: Record<string, unknown> = { string: "text", number: 1, boolean: true, object: {}, array: [] };

/** shellQuote quotes a word for a POSIX shell. */
function shellQuote(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

/**
 * invokeHint is a `shaker invoke` command that works for a workflow: its `--input` holds every field
 * its INPUT_SCHEMA requires and every `ctx.input["name"]` its script reads, each with a placeholder of
 * its type; a workflow that needs none of them but reads ctx.messages gets `--message`; else `--input '{}'`.
 */
export function invokeHint(ref: string, inputSchema: unknown, source: string): string {
  const schema = (inputSchema && typeof inputSchema === "object" ? inputSchema : {}) as Record<
    string,
    { type?: string; required?: boolean }
  >;
  const input: Record<string, unknown> = {};
  const add = (name: string) => {
    input[name] = placeholders[schema[name]?.type ?? "string"] ?? "text";
  };
  for (const [name, field] of Object.entries(schema)) if (field?.required) add(name);
  for (const m of source.matchAll(/\bctx\.input\[\s*(?:"([^"\\]+)"|'([^'\\]+)')\s*\]/g)) {
    const name = (m[1] ?? m[2])!;
    if (!Object.hasOwn(input, name)) add(name);
  }
  const command = `shaker invoke ${ref}`;
  if (Object.keys(input).length > 0) return `${command} --input ${shellQuote(JSON.stringify(input))}`;
  if (/\bctx\.messages\b/.test(source)) return `${command} --message 'Hello'`;
  return `${command} --input '{}'`;
}
