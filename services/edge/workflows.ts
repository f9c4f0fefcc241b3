import { type JsonObject, type MessageInitShape, toJson } from "@bufbuild/protobuf";
import {
  ExecutionMode,
  type UploadWorkflowRequestSchema,
  VersionBump,
  type Workflow,
  WorkflowSchema,
} from "../../gen/shaker/registry/v1/registry_pb.js";
import { versionBumps as bumps, executionModes as modes, workflowPages } from "../registry/rules.js";
import type { Clients } from "../shared/clients.js";
import { defaultMaxJsonDepth, nestsDeeperThan, toValue } from "../shared/json.js";
import { callerHeaders, field, HttpError, queryInt, readJson, sendJson, tooDeep } from "./http.js";
import type { EdgeRouter } from "./router.js";

/** Options of the workflow routes. */
export interface WorkflowRoutesOptions {
  clients: Clients;
  /** maxUploadBytes bounds upload bodies, which carry accessories (larger than invoke bodies). */
  maxUploadBytes: number;
  maxBodyBytes: number;
  /** maxJsonDepth bounds how deeply a JSON body nests; default defaultMaxJsonDepth (64). */
  maxJsonDepth?: number;
}

function enumField<T>(body: Record<string, unknown>, name: string, values: Record<string, T>): T | undefined {
  const v = field.string(body, name);
  if (v === undefined) return undefined;
  if (!Object.hasOwn(values, v))
    throw new HttpError(400, `'${name}' must be one of ${Object.keys(values).join(", ")}`, name, "invalid_value");
  return values[v];
}

/** uploadRequest turns the REST upload body into the Registry's request, naming any bad field. */
function uploadRequest(body: Record<string, unknown>, maxJsonDepth: number): MessageInitShape<typeof UploadWorkflowRequestSchema> {
  const accessories = (field.objectArray(body, "accessories") ?? []).map((a, i) => {
    const key = a.key;
    if (typeof key !== "string" || !key.trim())
      throw new HttpError(400, `'accessories[${i}].key' must be a non-empty string`, `accessories[${i}].key`);
    if ("content_base64" in a) {
      const encoded = typeof a.content_base64 === "string" ? a.content_base64.replace(/\s+/g, "") : undefined;
      // Standard or URL-safe alphabet, padding only at the end; Node's decoder would skip anything else silently.
      if (encoded === undefined || !/^[A-Za-z0-9+/_-]*={0,2}$/.test(encoded) || encoded.length % 4 === 1) {
        throw new HttpError(400, `'accessories[${i}].content_base64' is not valid base64`, `accessories[${i}].content_base64`);
      }
      const text = Buffer.from(encoded, "base64").toString("utf8");
      if (nestsDeeperThan(text, maxJsonDepth)) {
        throw tooDeep(maxJsonDepth, `'accessories[${i}].content_base64'`, `accessories[${i}].content_base64`);
      }
      try {
        return { key, content: toValue(JSON.parse(text)) };
      } catch {
        throw new HttpError(400, `'accessories[${i}].content_base64' does not decode to JSON`, `accessories[${i}].content_base64`);
      }
    }
    if (!("content" in a)) throw new HttpError(400, `'accessories[${i}]' needs 'content' (JSON) or 'content_base64'`, `accessories[${i}]`);
    return { key, content: toValue(a.content) };
  });
  const datastores = (field.objectArray(body, "datastores") ?? []).map((d, i) => {
    if (typeof d.name !== "string") throw new HttpError(400, `'datastores[${i}].name' must be a string`, `datastores[${i}].name`);
    if (d.write !== undefined && typeof d.write !== "boolean") {
      throw new HttpError(400, `'datastores[${i}].write' must be true or false`, `datastores[${i}].write`);
    }
    return { name: d.name, write: d.write === true };
  });
  return {
    workflowRefName: field.string(body, "workflow_ref_name", true),
    script: field.string(body, "script", true),
    workflowName: field.string(body, "workflow_name") ?? "",
    description: field.string(body, "description") ?? "",
    timeoutSeconds: field.integer(body, "timeout_seconds") ?? 0,
    executionMode: enumField(body, "execution_mode", modes) ?? ExecutionMode.UNSPECIFIED,
    env: field.stringMap(body, "env") ?? {},
    accessories: accessories as never,
    datastores: datastores as never,
    publishVersion: field.boolean(body, "publish_version"),
    versionBump: enumField(body, "version_bump", bumps) ?? VersionBump.UNSPECIFIED,
    versionNotes: field.string(body, "version_notes") ?? "",
  };
}

const modeNames = Object.fromEntries(Object.entries(modes).map(([name, mode]) => [ExecutionMode[mode], name]));

/** workflowJson is a workflow as REST shows it: snake_case, modes as in the upload body, no internal ids. */
function workflowJson(w: Workflow): JsonObject {
  const json = toJson(WorkflowSchema, w, { useProtoFieldName: true, alwaysEmitImplicit: true, enumAsInteger: false }) as JsonObject;
  if (w.versions.length === 0) delete json.versions;
  else {
    json.versions = w.versions.map((v, i) => {
      const { account_id: _account, script: _script, ...rest } = (json.versions as JsonObject[])[i];
      return { ...rest, execution_mode: modeNames[ExecutionMode[v.executionMode]] ?? "sync" };
    });
  }
  return json;
}

/** addWorkflowRoutes registers the workflow management REST routes of spec section 4. */
export function addWorkflowRoutes(router: EdgeRouter, options: WorkflowRoutesOptions): void {
  const { registry } = options.clients;
  router
    .add("POST", "/v1/workflows/upload", async (req, res) => {
      const headers = callerHeaders(req);
      const body = await readJson(req, options.maxUploadBytes, options.maxJsonDepth);
      const resp = await registry.uploadWorkflow(uploadRequest(body, options.maxJsonDepth ?? defaultMaxJsonDepth), { headers });
      sendJson(res, 201, {
        data: {
          workflow_ref_name: resp.workflowRefName,
          version: resp.version,
          created: resp.created,
          version_id: resp.versionId,
          unchanged: resp.unchanged,
        },
      });
    })
    .add("POST", "/v1/workflows/validate", async (req, res) => {
      const headers = callerHeaders(req);
      const body = await readJson(req, options.maxUploadBytes, options.maxJsonDepth);
      const code = field.string(body, "code") ?? field.string(body, "script");
      if (code === undefined) throw new HttpError(400, "'code' is required", "code", "missing_field");
      const resp = await registry.validateWorkflow({ code }, { headers });
      sendJson(res, 200, {
        data: { ok: resp.ok, errors: resp.errors.map((e) => ({ line: e.line, column: e.column, message: e.message })) },
      });
    })
    .add("GET", "/v1/workflows/default-script", async (req, res) => {
      const resp = await registry.getDefaultScript({}, { headers: callerHeaders(req) });
      sendJson(res, 200, { data: { script: resp.script } });
    })
    .add("GET", "/v1/workflows", async (req, res, _p, url) => {
      const headers = callerHeaders(req);
      const offset = queryInt(url, "offset", 2 ** 31 - 1);
      const limit = queryInt(url, "limit", workflowPages.maxLimit);
      const resp = await registry.listWorkflows({ offset, limit }, { headers });
      sendJson(res, 200, {
        data: resp.workflows.map(workflowJson),
        total: resp.total,
        offset,
        limit: limit || workflowPages.defaultLimit,
      });
    })
    .add("GET", "/v1/workflows/:ref", async (req, res, params) => {
      const resp = await registry.getWorkflow({ workflowRefName: params.ref }, { headers: callerHeaders(req) });
      sendJson(res, 200, { data: workflowJson(resp.workflow!) });
    })
    .add("DELETE", "/v1/workflows/:ref", async (req, res, params) => {
      const resp = await registry.deleteWorkflow({ workflowRefName: params.ref }, { headers: callerHeaders(req) });
      sendJson(res, 200, { data: { workflow_ref_name: resp.workflowRefName, deleted: true } });
    });
}
