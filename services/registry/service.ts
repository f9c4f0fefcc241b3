import { randomBytes } from "node:crypto";
import { create, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  type ApiKeySchema,
  ExecutionMode,
  RegistryService,
  VersionBump,
  type WorkflowVersion,
  WorkflowVersionSchema,
} from "../../gen/shaker/registry/v1/registry_pb.js";
import { type Auth, createAuth, type Identity, requireAccount, requireAdmin } from "../shared/auth.js";
import { invalidArgument } from "../shared/errors.js";
import { toValue } from "../shared/json.js";
import { namePattern } from "../shared/names.js";
import { shared } from "../shared/queue.js";
import {
  checkAccountName,
  checkNoNul,
  checkPage,
  checkUpload,
  parseVersion,
  sameVersion,
  scriptSizeError,
  workflowPages,
} from "./rules.js";
import type { ApiKeyRow, RegistryStore, VersionRow, WorkflowRow } from "./store.js";
import { createValidator, type ValidationResult } from "./validator.js";

export type { ValidationResult } from "./validator.js";

/** DEFAULT_ACCOUNT is the account `SHAKER_API_KEY` and the first start's key belong to. */
export const DEFAULT_ACCOUNT = "default";

/** Options of createRegistryService. */
export interface RegistryServiceOptions {
  store: RegistryStore;
  /** serviceSecret authenticates internal calls and signs run tokens. */
  serviceSecret: string;
  /** python runs the validator. */
  python: string;
  /** defaultTimeoutSeconds applies when an upload sets none. */
  defaultTimeoutSeconds: number;
  /** maxTimeoutSeconds is the largest timeout an upload may ask for. */
  maxTimeoutSeconds: number;
  /** runIsLive refuses the tokens of runs that have ended (AuthOptions.runIsLive). */
  runIsLive?: (runId: string) => boolean | Promise<boolean>;
}

/** generateApiKey makes a new key: a recognisable prefix and 192 random bits. */
export function generateApiKey(): string {
  return `sk-shaker-${randomBytes(24).toString("base64url")}`;
}

/** versionString formats a version row's number. */
export function versionString(v: Pick<VersionRow, "major" | "minor" | "patch">): string {
  return `${v.major}.${v.minor}.${v.patch}`;
}

function keyMessage(row: ApiKeyRow, accountName: string): MessageInitShape<typeof ApiKeySchema> {
  return {
    id: row.id,
    prefix: row.prefix,
    accountName,
    createdAt: timestampFromMs(row.createdAt),
    revokedAt: row.revokedAt ? timestampFromMs(row.revokedAt) : undefined,
  };
}

/**
 * versionMessage turns a stored version into its message. Scripts are left out unless asked for,
 * so listings stay small.
 */
function versionMessage(
  workflow: WorkflowRow,
  v: VersionRow,
  accessoryKeys: string[],
  withScript: boolean,
): MessageInitShape<typeof WorkflowVersionSchema> {
  return {
    workflowRefName: workflow.refName,
    version: versionString(v),
    versionId: v.id,
    workflowName: v.workflowName,
    description: v.description,
    script: withScript ? v.script : "",
    inputSchema: (v.inputSchema as JsonObject | null) ?? undefined,
    outputSchema: (v.outputSchema as JsonObject | null) ?? undefined,
    env: v.env,
    timeoutSeconds: v.timeoutSeconds,
    executionMode: v.executionMode as ExecutionMode,
    datastores: v.datastores,
    accessoryKeys,
    notes: v.notes,
    published: v.published,
    createdAt: timestampFromMs(v.createdAt),
    accountId: workflow.accountId,
  };
}

function bump(latest: VersionRow | undefined, how: VersionBump): [number, number, number] {
  if (!latest) return [1, 0, 0];
  switch (how) {
    case VersionBump.MAJOR:
      return [latest.major + 1, 0, 0];
    case VersionBump.PATCH:
      return [latest.major, latest.minor, latest.patch + 1];
    default:
      return [latest.major, latest.minor + 1, 0];
  }
}

const invalid = invalidArgument;

/**
 * resolvedMsWithOthers is how long a resolved version is kept when other Registries write the same
 * workflows (see RegistryStore.othersWrite): a version uploaded through one is served by every
 * edge within it.
 */
const resolvedMsWithOthers = 1000;

/** RegistryServiceHandle is the Registry as the composition root holds it. */
export interface RegistryServiceHandle {
  impl: ServiceImpl<typeof RegistryService>;
  /** routes serves impl on a router. */
  routes(router: ConnectRouter): void;
  auth: Auth;
  validate: (code: string) => Promise<ValidationResult>;
  close(): void;
}

/** createRegistryService builds the Registry's handlers over its store. */
export function createRegistryService(options: RegistryServiceOptions): RegistryServiceHandle {
  const { store } = options;
  const validator = createValidator(options.python);
  const auth = createAuth({
    serviceSecret: options.serviceSecret,
    // The Registry owns the keys, so it reads them directly and needs no cache.
    keyCacheMs: 0,
    runIsLive: options.runIsLive,
    authenticateKey: async (apiKey) => {
      const owner = await store.ownerOfKey(apiKey);
      return owner && { accountId: owner.account.id, admin: owner.account.admin, keyId: owner.key.id };
    },
  });

  async function caller(ctx: HandlerContext): Promise<Identity> {
    return auth.identify(ctx.requestHeader);
  }

  /**
   * requireManager returns the caller's account for calls that manage or read the account's workflows;
   * a run's token may not make them (it reaches only its own version's accessories).
   */
  function requireManager(identity: Identity, what: string): string {
    if (identity.kind === "run") throw new ConnectError(`a workflow run may not ${what}`, Code.PermissionDenied);
    return requireAccount(identity);
  }

  async function validate(code: string): Promise<ValidationResult> {
    const tooLong = scriptSizeError(code);
    if (tooLong) return { errors: [tooLong], input_schema: null, output_schema: null };
    try {
      return await validator.validate(code);
    } catch (e) {
      throw new ConnectError(`the validator failed: ${(e as Error).message}`, Code.Internal);
    }
  }

  async function liveWorkflow(accountId: string, refName: string): Promise<WorkflowRow> {
    const workflow = namePattern.test(refName) ? await store.workflow(accountId, refName) : undefined;
    if (!workflow) throw new ConnectError(`workflow '${refName}' not found`, Code.NotFound);
    return workflow;
  }

  /** resolve finds the version an invoke names: by id, by number, or the latest published one. */
  async function resolve(
    accountId: string,
    refName: string,
    wanted: string,
    versionId: string,
  ): Promise<MessageInitShape<typeof WorkflowVersionSchema>> {
    if (versionId) {
      checkNoNul(versionId, "version_id");
      const found = await store.versionById(versionId);
      if (!found || found.workflow.accountId !== accountId) {
        throw new ConnectError(`workflow version '${versionId}' not found`, Code.NotFound);
      }
      return versionMessage(found.workflow, found.version, await store.accessoryKeys(found.version.id), true);
    }
    const workflow = await liveWorkflow(accountId, refName);
    let version: VersionRow | undefined;
    if (wanted) {
      const number = parseVersion(wanted);
      version = number ? await store.version(workflow.id, ...number) : undefined;
      if (!version) throw new ConnectError(`workflow '${refName}' has no version '${wanted}'`, Code.NotFound);
    } else {
      version = await store.latestVersion(workflow.id, true);
      if (!version) throw new ConnectError(`workflow '${refName}' has no published version`, Code.NotFound);
    }
    return versionMessage(workflow, version, await store.accessoryKeys(version.id), true);
  }
  // What resolveWorkflow answered, by account and name, while no workflow is written here, and for
  // resolvedMsWithOthers at most when other Registries write too (scripts are up to 1 MiB each, so
  // bounded by their size as well as their number).
  const resolved = new Map<string, WorkflowVersion>();
  const maxResolved = 1000;
  const maxResolvedScriptBytes = 32 * 1024 * 1024;
  let resolvedScriptBytes = 0;
  let resolvedAt = -1;
  let resolvedSince = 0;
  // Counts the forgettings: what was read across one may predate it, and is not kept.
  let forgotten = 0;
  /** reading makes the reads of workflows, shared while in flight. */
  const reading = shared<WorkflowVersion>();
  function forgetResolved(): void {
    resolved.clear();
    resolvedScriptBytes = 0;
    resolvedAt = store.workflowsWritten();
    resolvedSince = Date.now();
    forgotten++;
  }
  function resolvedCurrent(): boolean {
    return resolvedAt === store.workflowsWritten() && !(store.othersWrite && Date.now() - resolvedSince >= resolvedMsWithOthers);
  }

  const impl: ServiceImpl<typeof RegistryService> = {
    async authenticate(req, ctx) {
      const identity = await caller(ctx);
      if (identity.kind !== "service") {
        throw new ConnectError("Authenticate is for services only", Code.PermissionDenied);
      }
      const owner = await store.ownerOfKey(req.apiKey);
      if (!owner) throw new ConnectError("invalid API key", Code.Unauthenticated);
      return { account: { id: owner.account.id, name: owner.account.name, admin: owner.account.admin }, keyId: owner.key.id };
    },

    async createApiKey(req, ctx) {
      const identity = await caller(ctx);
      requireAdmin(identity, "manage other accounts' keys");
      const name = req.accountName.trim();
      checkAccountName(name);
      const existing = await store.accountByName(name);
      if (existing && req.admin && !existing.admin) {
        // Never turn an account into an admin one as a side effect of making a key.
        throw new ConnectError(
          `account '${name}' already exists and is not an admin account; admin applies only to a new account`,
          Code.FailedPrecondition,
        );
      }
      const account = existing ?? (await store.ensureAccount(name, req.admin));
      const apiKey = generateApiKey();
      const row = await store.insertKey(account.id, apiKey);
      return { apiKey, key: keyMessage(row, account.name) };
    },

    async listApiKeys(req, ctx) {
      const identity = await caller(ctx);
      if (identity.kind === "run") throw new ConnectError("a workflow run may not list API keys", Code.PermissionDenied);
      if (req.allAccounts) {
        if (req.accountName) throw invalid("account_name and all_accounts exclude each other");
        requireAdmin(identity, "manage other accounts' keys");
        return { keys: (await store.allKeys()).map((k) => keyMessage(k.key, k.accountName)) };
      }
      let accountId: string;
      if (req.accountName) {
        // A non-admin learns nothing about other accounts, not even whether they exist.
        const own = identity.accountId ? await store.accountById(identity.accountId) : undefined;
        if (own?.name !== req.accountName) requireAdmin(identity, "manage other accounts' keys");
        checkNoNul(req.accountName, "account_name");
        const account = await store.accountByName(req.accountName);
        if (!account) throw new ConnectError(`account '${req.accountName}' not found`, Code.NotFound);
        accountId = account.id;
      } else {
        accountId = requireAccount(identity);
      }
      const account = await store.accountById(accountId);
      if (!account) throw new ConnectError("account not found", Code.NotFound);
      return { keys: (await store.keysOf(accountId)).map((k) => keyMessage(k, account.name)) };
    },

    async revokeApiKey(req, ctx) {
      const identity = await caller(ctx);
      if (identity.kind === "run") throw new ConnectError("a workflow run may not revoke API keys", Code.PermissionDenied);
      const keyId = req.keyId.trim();
      checkNoNul(keyId, "key_id");
      const key = await store.keyById(keyId);
      const admin = identity.kind === "service" || (identity.kind === "key" && identity.admin);
      // Another account's key is "not found" to a non-admin, exactly like a key that does not exist.
      if (!key || (key.accountId !== identity.accountId && !admin)) {
        throw new ConnectError(`API key '${req.keyId}' not found`, Code.NotFound);
      }
      await store.revokeKey(key.id);
      const account = (await store.accountById(key.accountId))!;
      return { key: keyMessage((await store.keyById(key.id))!, account.name) };
    },

    async uploadWorkflow(req, ctx) {
      const accountId = requireManager(await caller(ctx), "upload workflows");
      const accessoryList = checkUpload(req, options.maxTimeoutSeconds);
      const result = await validate(req.script);
      if (result.errors.length > 0) {
        const lines = result.errors.map((e) => `line ${e.line}, column ${e.column}: ${e.message}`);
        throw invalid(`the script is not a valid workflow:\n${lines.join("\n")}`, "script");
      }
      const fields = {
        workflowName: req.workflowName.trim() || req.workflowRefName,
        description: req.description,
        script: req.script,
        inputSchema: result.input_schema,
        outputSchema: result.output_schema,
        env: req.env,
        timeoutSeconds: req.timeoutSeconds || options.defaultTimeoutSeconds,
        executionMode: req.executionMode || ExecutionMode.SYNC,
        datastores: req.datastores.map((d) => ({ name: d.name, write: d.write })),
        notes: req.versionNotes,
        published: req.publishVersion ?? true,
      };
      // Re-uploading what the latest version already is stores nothing, unless a bump was asked for.
      const explicitBump = req.versionBump !== VersionBump.UNSPECIFIED;
      const stored = await store.insertVersion(
        accountId,
        req.workflowRefName,
        (latest) => bump(latest, req.versionBump),
        fields,
        accessoryList,
        explicitBump ? undefined : (latest, storedAccessories) => sameVersion(fields, accessoryList, latest, storedAccessories),
      );
      return {
        workflowRefName: stored.workflow.refName,
        version: versionString(stored.version),
        created: stored.created,
        versionId: stored.version.id,
        unchanged: stored.unchanged,
      };
    },

    async validateWorkflow(req, ctx) {
      await caller(ctx);
      const result = await validate(req.code);
      return { ok: result.errors.length === 0, errors: result.errors };
    },

    async getWorkflow(req, ctx) {
      const accountId = requireManager(await caller(ctx), "read workflows");
      const workflow = await liveWorkflow(accountId, req.workflowRefName);
      const versions = await store.versions(workflow.id);
      const latest = versions.find((v) => v.published) ?? versions[0];
      return {
        workflow: {
          workflowRefName: workflow.refName,
          workflowName: latest?.workflowName ?? workflow.refName,
          description: latest?.description ?? "",
          latestVersion: versions.find((v) => v.published) ? versionString(latest!) : "",
          createdAt: timestampFromMs(workflow.createdAt),
          updatedAt: timestampFromMs(workflow.updatedAt),
          versions: await Promise.all(versions.map(async (v) => versionMessage(workflow, v, await store.accessoryKeys(v.id), false))),
        },
      };
    },

    async listWorkflows(req, ctx) {
      const accountId = requireManager(await caller(ctx), "list workflows");
      checkPage(req.offset, req.limit);
      const { rows, total } = await store.listWorkflows(accountId, req.offset, req.limit || workflowPages.defaultLimit);
      return {
        total,
        workflows: await Promise.all(
          rows.map(async (w) => {
            const latest = (await store.latestVersion(w.id, true)) ?? (await store.latestVersion(w.id, false));
            return {
              workflowRefName: w.refName,
              workflowName: latest?.workflowName ?? w.refName,
              description: latest?.description ?? "",
              latestVersion: latest?.published ? versionString(latest) : "",
              createdAt: timestampFromMs(w.createdAt),
              updatedAt: timestampFromMs(w.updatedAt),
            };
          }),
        ),
      };
    },

    async deleteWorkflow(req, ctx) {
      const accountId = requireManager(await caller(ctx), "delete workflows");
      const workflow = await liveWorkflow(accountId, req.workflowRefName);
      await store.deleteWorkflow(workflow.id);
      return { workflowRefName: workflow.refName };
    },

    async resolveWorkflow(req, ctx) {
      // Another workflow's script and env are not a run's to read; ctx.workflows.run goes through the Executor.
      const accountId = requireManager(await caller(ctx), "resolve workflows");
      // Every invoke resolves its workflow: what was resolved is kept while it is current.
      const key = `${accountId}\n${req.versionId}\n${req.workflowRefName}\n${req.version}`;
      if (!resolvedCurrent()) forgetResolved();
      const version = resolved.get(key);
      if (version) return { version };
      // The invokes that miss together (every one in flight when the cache was forgotten) share one
      // read; one after a forgetting reads anew.
      const readAfter = forgotten;
      const read = reading(`${readAfter}\n${key}`, async () => {
        const version = create(WorkflowVersionSchema, await resolve(accountId, req.workflowRefName, req.version, req.versionId));
        if (readAfter === forgotten && resolvedCurrent()) {
          if (resolved.size >= maxResolved || resolvedScriptBytes + version.script.length > maxResolvedScriptBytes) forgetResolved();
          resolved.set(key, version);
          resolvedScriptBytes += version.script.length;
        }
        return version;
      });
      return { version: await read };
    },

    async getAccessory(req, ctx) {
      const identity = await caller(ctx);
      const accountId = requireAccount(identity);
      checkNoNul(req.versionId, "version_id");
      checkNoNul(req.key, "key");
      const found = await store.versionById(req.versionId);
      // A run reads its own version's accessories only; any other version is "not found" to it.
      const foreign = identity.kind === "run" && identity.claims.versionId !== req.versionId;
      if (!found || found.workflow.accountId !== accountId || foreign) {
        throw new ConnectError(`workflow version '${req.versionId}' not found`, Code.NotFound);
      }
      const accessory = await store.accessory(req.versionId, req.key);
      if (!accessory) throw new ConnectError(`accessory '${req.key}' not found`, Code.NotFound);
      return { accessory: { key: accessory.key, content: toValue(JSON.parse(accessory.content)) } };
    },

    async getDefaultScript(_req, ctx) {
      await caller(ctx);
      return { script: defaultScript };
    },
  };
  return {
    impl,
    routes: (router) => router.service(RegistryService, impl),
    auth,
    validate,
    close: () => validator.close(),
  };
}

/** defaultScript is the template GET /v1/workflows/default-script returns. */
export const defaultScript = `from shaker import WorkflowContext

# INPUT_SCHEMA is checked at invoke time: a missing required field is a 400 naming it.
INPUT_SCHEMA = {"query": {"type": "string", "description": "what to answer", "required": False}}
OUTPUT_SCHEMA = {"answer": {"type": "string", "description": "the answer"}}


def execute(ctx: WorkflowContext):
    query = (ctx.input or {}).get("query") or (ctx.messages[-1]["content"] if ctx.messages else "")
    ctx.log("answering", query=query)
    resp = ctx.chat.completions.create(messages=[{"role": "user", "content": query}], intent="answer")
    return {"answer": resp["choices"][0]["message"]["content"]}
`;
