// The Registry's field rules: what an upload, a key request and a listing may carry. The Registry's
// handlers enforce them; the edge and the CLI take the names and bounds they share from here.
import { ExecutionMode, type UploadWorkflowRequest, type ValidationError, VersionBump } from "../../gen/shaker/registry/v1/registry_pb.js";
import { invalidArgument as invalid, tooLarge } from "../shared/errors.js";
import { fromValue } from "../shared/json.js";
import { namePattern } from "../shared/names.js";

/** The limits of what an upload may carry. */
export const registryLimits = {
  accessoryBytes: 50 * 1024 * 1024,
  accessoriesPerWorkflow: 100,
  scriptBytes: 1024 * 1024,
  envEntries: 200,
};

/** The page sizes of ListWorkflows: the default when a listing asks for none, and the most it may ask for. */
export const workflowPages = { defaultLimit: 20, maxLimit: 100 };

/** executionModes are the names of the execution modes in a REST upload body and on the command line. */
export const executionModes: Readonly<Record<string, ExecutionMode>> = {
  sync: ExecutionMode.SYNC,
  stream: ExecutionMode.STREAM,
  async: ExecutionMode.ASYNC,
};

/** versionBumps are the names of the version bumps in a REST upload body and on the command line. */
export const versionBumps: Readonly<Record<string, VersionBump>> = {
  major: VersionBump.MAJOR,
  minor: VersionBump.MINOR,
  patch: VersionBump.PATCH,
};

const envNamePattern = /^[A-Za-z_][A-Za-z0-9_]{0,255}$/;
const versionPattern = /^(\d{1,9})\.(\d{1,9})\.(\d{1,9})$/;
const accessoryKeyMaxLength = 256;

/** normaliseAccessoryKey makes keys case-insensitive with '-' and '_' alike, as the hosted product does. */
export function normaliseAccessoryKey(key: string): string {
  return key.trim().toLowerCase().replaceAll("-", "_");
}

/** parseVersion reads a `major.minor.patch` version number; undefined when it is not one. */
export function parseVersion(version: string): [number, number, number] | undefined {
  const m = versionPattern.exec(version);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

/**
 * checkNoNul refuses text holding a NUL character, naming its field: PostgreSQL's text cannot hold
 * one, and SQLite refuses it too so that both answer alike.
 */
export function checkNoNul(value: string, field: string): void {
  if (value.includes("\0")) throw invalid(`${field} must not contain NUL characters`, field);
}

/** checkAccountName refuses an account name that is not a valid name. */
export function checkAccountName(name: string): void {
  if (!namePattern.test(name)) {
    throw invalid(`account name '${name}' must match ${namePattern.source} (lower-case letters, digits, '-' and '_')`, "account_name");
  }
}

/** checkPage refuses a ListWorkflows offset or limit out of bounds (a limit of 0 is the default). */
export function checkPage(offset: number, limit: number): void {
  if (offset < 0) throw invalid("offset must be 0 or more", "offset");
  if (limit < 0 || limit > workflowPages.maxLimit) throw invalid(`limit must be between 1 and ${workflowPages.maxLimit}`, "limit");
}

/** scriptSizeError is the validation error of a script larger than the limit; undefined when it fits. */
export function scriptSizeError(code: string): ValidationError | undefined {
  if (Buffer.byteLength(code) <= registryLimits.scriptBytes) return undefined;
  return { line: 0, column: 0, message: `script is larger than ${registryLimits.scriptBytes} bytes` } as ValidationError;
}

/** An accessory as the store keeps it: its key as given and its content as JSON text. */
export interface AccessoryInput {
  key: string;
  content: string;
}

/**
 * checkUpload refuses an upload whose fields break a rule, naming the field at fault (the script
 * itself is left to the validator). It returns the accessories as the store keeps them.
 */
export function checkUpload(req: UploadWorkflowRequest, maxTimeoutSeconds: number): AccessoryInput[] {
  if (!namePattern.test(req.workflowRefName)) {
    throw invalid(`workflow_ref_name must match ${namePattern.source}`, "workflow_ref_name");
  }
  if (!req.script.trim()) throw invalid("script is required", "script");
  checkNoNul(req.script, "script");
  checkNoNul(req.workflowName, "workflow_name");
  checkNoNul(req.description, "description");
  checkNoNul(req.versionNotes, "version_notes");
  if (req.timeoutSeconds < 0 || req.timeoutSeconds > maxTimeoutSeconds) {
    throw invalid(`timeout_seconds must be between 1 and ${maxTimeoutSeconds}`, "timeout_seconds");
  }
  checkEnv(req.env);
  const accessories = checkAccessories(req.accessories);
  for (const [i, d] of req.datastores.entries()) {
    if (!namePattern.test(d.name)) throw invalid(`datastores[${i}].name must match ${namePattern.source}`, `datastores[${i}].name`);
  }
  return accessories;
}

function checkEnv(env: Record<string, string>): void {
  if (Object.keys(env).length > registryLimits.envEntries) {
    throw invalid(`env has more than ${registryLimits.envEntries} entries`, "env");
  }
  for (const [name, value] of Object.entries(env)) {
    // They become os.environ of the run: names must be environment variable names.
    if (!envNamePattern.test(name)) throw invalid(`env name '${name}' must match ^[A-Za-z_][A-Za-z0-9_]*$`, `env.${name}`);
    checkNoNul(value, `env.${name}`);
  }
}

function checkAccessories(accessories: UploadWorkflowRequest["accessories"]): AccessoryInput[] {
  if (accessories.length > registryLimits.accessoriesPerWorkflow) {
    throw invalid(
      `a workflow may have at most ${registryLimits.accessoriesPerWorkflow} accessories, got ${accessories.length}`,
      "accessories",
    );
  }
  const list: AccessoryInput[] = [];
  const seenKeys = new Map<string, string>();
  for (const [i, a] of accessories.entries()) {
    const key = a.key.trim();
    if (!key) throw invalid(`accessories[${i}].key is required`, `accessories[${i}].key`);
    checkNoNul(key, `accessories[${i}].key`);
    if (key.length > accessoryKeyMaxLength) {
      throw invalid(`accessories[${i}].key is longer than ${accessoryKeyMaxLength} characters`, `accessories[${i}].key`);
    }
    const normal = normaliseAccessoryKey(key);
    const earlier = seenKeys.get(normal);
    if (earlier !== undefined) {
      throw invalid(
        `accessories[${i}].key '${key}' is the same key as '${earlier}' (keys are case-insensitive, '-' and '_' alike)`,
        `accessories[${i}].key`,
      );
    }
    seenKeys.set(normal, key);
    if (a.content === undefined) throw invalid(`accessories[${i}].content is required`, `accessories[${i}].content`);
    const content = JSON.stringify(fromValue(a.content));
    const size = Buffer.byteLength(content);
    if (size > registryLimits.accessoryBytes) {
      throw tooLarge(
        `accessories[${i}] ('${key}') is ${size} bytes of JSON; the limit is ${registryLimits.accessoryBytes} bytes (${registryLimits.accessoryBytes / 1024 / 1024} MiB) per accessory`,
        `accessories[${i}]`,
      );
    }
    list.push({ key, content });
  }
  return list;
}

/**
 * VersionContent is everything a stored version is made of (its number, id and time aside): two
 * uploads with equal content are the same version.
 */
export interface VersionContent {
  workflowName: string;
  description: string;
  script: string;
  inputSchema: unknown;
  outputSchema: unknown;
  env: Record<string, string>;
  timeoutSeconds: number;
  executionMode: number;
  datastores: { name: string; write: boolean }[];
  notes: string;
  published: boolean;
}

/** canonicalJson writes a JSON value with every object's keys sorted, so equal values write equal text. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value ?? null, (_key, v: unknown) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

function datastoresText(list: VersionContent["datastores"]): string {
  return canonicalJson(
    [...list].map((d) => ({ name: d.name, write: d.write })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
  );
}

/** accessoriesEqual compares two versions' accessories by key (as given) and content (as JSON), in any order. */
function accessoriesEqual(a: AccessoryInput[], b: AccessoryInput[]): boolean {
  if (a.length !== b.length) return false;
  const byKey = new Map(b.map((x) => [normaliseAccessoryKey(x.key), x]));
  return a.every((x) => {
    const other = byKey.get(normaliseAccessoryKey(x.key));
    if (!other || other.key !== x.key) return false;
    return other.content === x.content || canonicalJson(JSON.parse(other.content)) === canonicalJson(JSON.parse(x.content));
  });
}

/**
 * sameVersion tells whether an upload (its content and accessories) equals a stored version in
 * everything that makes a version: script, schemas, env, accessories, datastore bindings, timeout,
 * execution mode, name, description, notes and whether it is published. Maps and lists compare
 * regardless of order. `storedAccessories` is called only once everything else is equal.
 */
export async function sameVersion(
  upload: VersionContent,
  uploadAccessories: AccessoryInput[],
  stored: VersionContent,
  storedAccessories: () => Promise<AccessoryInput[]>,
): Promise<boolean> {
  return (
    upload.script === stored.script &&
    upload.workflowName === stored.workflowName &&
    upload.description === stored.description &&
    upload.notes === stored.notes &&
    upload.published === stored.published &&
    upload.timeoutSeconds === stored.timeoutSeconds &&
    upload.executionMode === stored.executionMode &&
    canonicalJson(upload.env) === canonicalJson(stored.env) &&
    canonicalJson(upload.inputSchema) === canonicalJson(stored.inputSchema) &&
    canonicalJson(upload.outputSchema) === canonicalJson(stored.outputSchema) &&
    datastoresText(upload.datastores) === datastoresText(stored.datastores) &&
    accessoriesEqual(uploadAccessories, await storedAccessories())
  );
}
