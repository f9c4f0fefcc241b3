// Re-uploading what the latest version already is stores nothing (issue 18): the Registry in
// process for every field that makes a version, then once through the REST edge and the CLI's wording.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecutionMode, RegistryService, type UploadWorkflowRequestSchema, VersionBump } from "../gen/shaker/registry/v1/registry_pb.js";
import { createRegistryService, DEFAULT_ACCOUNT, generateApiKey } from "../services/registry/service.js";
import { createRegistryStore } from "../services/registry/store.js";
import { toValue } from "../services/shared/json.js";
import { runMain } from "./cli-process.js";
import { testStoreLocation } from "./databases.js";
import { startTestServer, type TestServer } from "./helpers.js";

type Upload = MessageInitShape<typeof UploadWorkflowRequestSchema>;

const script = `INPUT_SCHEMA = {"q": {"type": "string"}}
OUTPUT_SCHEMA = {"a": {"type": "string"}}


def execute(ctx):
    return {"a": ctx.input.get("q", "")}
`;

describe("an upload equal to the latest version (Registry in process)", async () => {
  const database = await testStoreLocation();
  const store = await createRegistryStore(database.location);
  const registry = createRegistryService({
    store,
    serviceSecret: "registry-unchanged-test-secret",
    python: process.env.SHAKER_PYTHON ?? "python3",
    defaultTimeoutSeconds: 60,
    maxTimeoutSeconds: 600,
  });
  const client = createClient(
    RegistryService,
    createRouterTransport((router) => router.service(RegistryService, registry.impl)),
  );
  const account = await store.ensureAccount(DEFAULT_ACCOUNT, true);
  const key = generateApiKey();
  await store.insertKey(account.id, key);
  const as: CallOptions = { headers: { authorization: `Bearer ${key}` } };
  afterAll(async () => {
    registry.close();
    await store.close();
    await database.release();
  });

  const base = (ref: string): Upload => ({
    workflowRefName: ref,
    script,
    workflowName: "Answerer",
    description: "answers",
    timeoutSeconds: 30,
    executionMode: ExecutionMode.STREAM,
    env: { MODE: "a", LEVEL: "2" },
    accessories: [
      { key: "Plan-A", content: toValue({ steps: [1, 2], owner: { name: "x", id: 1 } }) },
      { key: "prompts", content: toValue({ hello: "hi" }) },
    ],
    datastores: [
      { name: "docs", write: true },
      { name: "faq", write: false },
    ],
    versionNotes: "first",
  });
  const upload = (req: Upload) => client.uploadWorkflow(req, as);
  const versionsOf = async (ref: string) =>
    (await client.getWorkflow({ workflowRefName: ref }, as)).workflow!.versions.map((v) => v.version);

  it("answers the latest version, unchanged, when everything equals it, in any order of maps and lists", async () => {
    const first = await upload(base("same"));
    expect(first).toMatchObject({ version: "1.0.0", created: true, unchanged: false });
    const again = await upload(base("same"));
    expect(again).toMatchObject({ version: "1.0.0", versionId: first.versionId, created: false, unchanged: true });
    // Env, accessories, their contents' keys and datastores in another order are the same version.
    const reordered = base("same");
    reordered.env = { LEVEL: "2", MODE: "a" };
    reordered.accessories = [
      { key: "prompts", content: toValue({ hello: "hi" }) },
      { key: "Plan-A", content: toValue({ owner: { id: 1, name: "x" }, steps: [1, 2] }) },
    ];
    reordered.datastores = [
      { name: "faq", write: false },
      { name: "docs", write: true },
    ];
    expect(await upload(reordered)).toMatchObject({ version: "1.0.0", versionId: first.versionId, unchanged: true });
    expect(await versionsOf("same")).toEqual(["1.0.0"]);
    // Nothing was written: the workflow's updated_at stays the first upload's.
    const wf = (await client.getWorkflow({ workflowRefName: "same" }, as)).workflow!;
    expect(wf.updatedAt).toEqual(wf.createdAt);
  });

  const changes: [string, (req: Upload) => void][] = [
    ["the script", (r) => (r.script = `${script}# a comment\n`)],
    ["the output schema", (r) => (r.script = script.replace('"a": {"type": "string"}', '"a": {"type": "number"}'))],
    ["the workflow name", (r) => (r.workflowName = "Answerer 2")],
    ["the description", (r) => (r.description = "answers better")],
    ["the version notes", (r) => (r.versionNotes = "second")],
    ["the timeout", (r) => (r.timeoutSeconds = 31)],
    ["the execution mode", (r) => (r.executionMode = ExecutionMode.ASYNC)],
    ["an env value", (r) => (r.env = { MODE: "b", LEVEL: "2" })],
    ["an env entry more", (r) => (r.env = { MODE: "a", LEVEL: "2", EXTRA: "" })],
    [
      "an accessory's content",
      (r) =>
        (r.accessories = [
          { key: "Plan-A", content: toValue({ steps: [2, 1], owner: { name: "x", id: 1 } }) },
          { key: "prompts", content: toValue({ hello: "hi" }) },
        ]),
    ],
    [
      "an accessory's key as given",
      (r) =>
        (r.accessories = [
          { key: "plan_a", content: toValue({ steps: [1, 2], owner: { name: "x", id: 1 } }) },
          { key: "prompts", content: toValue({ hello: "hi" }) },
        ]),
    ],
    ["an accessory fewer", (r) => (r.accessories = [{ key: "prompts", content: toValue({ hello: "hi" }) }])],
    [
      "a datastore's access",
      (r) =>
        (r.datastores = [
          { name: "docs", write: false },
          { name: "faq", write: false },
        ]),
    ],
    ["a datastore fewer", (r) => (r.datastores = [{ name: "docs", write: true }])],
    ["publish_version", (r) => (r.publishVersion = false)],
  ];
  for (const [what, change] of changes) {
    it(`stores a new version when only ${what} differs`, async () => {
      const ref = `diff-${what.replace(/[^a-z]+/g, "-")}`;
      await upload(base(ref));
      const changed = base(ref);
      change(changed);
      const next = await upload(changed);
      expect(next).toMatchObject({ version: "1.1.0", unchanged: false });
      // ...and the changed upload, sent again, is that new version.
      expect(await upload(changed)).toMatchObject({ version: "1.1.0", versionId: next.versionId, unchanged: true });
    });
  }

  it("stores a new version when a bump is asked for, even with nothing changed", async () => {
    await upload(base("bumped"));
    expect(await upload({ ...base("bumped"), versionBump: VersionBump.PATCH })).toMatchObject({ version: "1.0.1", unchanged: false });
    expect(await upload({ ...base("bumped"), versionBump: VersionBump.MINOR })).toMatchObject({ version: "1.1.0", unchanged: false });
    expect(await upload({ ...base("bumped"), versionBump: VersionBump.MAJOR })).toMatchObject({ version: "2.0.0", unchanged: false });
    expect(await upload(base("bumped"))).toMatchObject({ version: "2.0.0", unchanged: true });
  });

  it("compares with the latest version, published or not: publishing a draft as it is makes a new version", async () => {
    await upload(base("drafted"));
    const draft = await upload({ ...base("drafted"), publishVersion: false });
    expect(draft).toMatchObject({ version: "1.1.0", unchanged: false });
    expect(await upload({ ...base("drafted"), publishVersion: false })).toMatchObject({ version: "1.1.0", unchanged: true });
    // Equal to 1.0.0 but not to the latest (the unpublished 1.1.0): a new, published version.
    expect(await upload(base("drafted"))).toMatchObject({ version: "1.2.0", unchanged: false });
    expect((await client.getWorkflow({ workflowRefName: "drafted" }, as)).workflow!.latestVersion).toBe("1.2.0");
  });

  it("starts again at 1.0.0 after a delete, even with the same content", async () => {
    await upload(base("reborn"));
    await client.deleteWorkflow({ workflowRefName: "reborn" }, as);
    expect(await upload(base("reborn"))).toMatchObject({ version: "1.0.0", created: true, unchanged: false });
  });
});

describe("an unchanged upload through the REST edge", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server.close());

  it('answers "unchanged": true with the latest version, and false for a new one', async () => {
    const body = {
      workflow_ref_name: "rest-same",
      script,
      env: { MODE: "a" },
      accessories: [{ key: "plan", content: { a: 1 } }],
    };
    const first = await server.request("POST", "/v1/workflows/upload", body);
    expect(first.status).toBe(201);
    expect(first.body.data).toMatchObject({ version: "1.0.0", created: true, unchanged: false });
    const again = await server.request("POST", "/v1/workflows/upload", body);
    expect(again.status).toBe(201);
    expect(again.body.data).toEqual({
      workflow_ref_name: "rest-same",
      version: "1.0.0",
      created: false,
      version_id: first.body.data.version_id,
      unchanged: true,
    });
    const bumped = await server.request("POST", "/v1/workflows/upload", { ...body, version_bump: "patch" });
    expect(bumped.body.data).toMatchObject({ version: "1.0.1", unchanged: false });
    const got = await server.request("GET", "/v1/workflows/rest-same");
    expect(got.body.data.versions.map((v: { version: string }) => v.version)).toEqual(["1.0.1", "1.0.0"]);
    const invoked = await server.invoke({ model: "workflow:rest-same", input: { q: "hi" } });
    expect(invoked.body.output).toEqual({ a: "hi" });
  });

  it('says "unchanged, still X.Y.Z" on the command line', async () => {
    const dir = mkdtempSync(join(tmpdir(), "shaker-unchanged-"));
    try {
      const path = join(dir, "cli-same.py");
      writeFileSync(path, script);
      const env = { SHAKER_URL: server.url, SHAKER_API_KEY: server.apiKey };
      const first = await runMain(["upload", path], env);
      expect(first.stdout, first.stderr).toContain("created workflow cli-same version 1.0.0");
      const again = await runMain(["upload", path], env);
      expect(again.stdout, again.stderr).toContain("workflow cli-same unchanged, still 1.0.0");
      const bumped = await runMain(["upload", path, "--bump", "patch"], env);
      expect(bumped.stdout, bumped.stderr).toContain("updated workflow cli-same version 1.0.1");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
