// The Registry's rules in process: its handlers over a store of their own (in memory, or an empty PostgreSQL database),
// called through createRouterTransport (no port, no edge, no other service). Its peers are faked: the Executor is
// the set of runs still live, and the run tokens it would mint are minted here with the same auth.
// The REST edge's view of the same rules is in registry.versions.test.ts and accounts.test.ts.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import { ExecutionMode, RegistryService, type UploadWorkflowRequestSchema, VersionBump } from "../gen/shaker/registry/v1/registry_pb.js";
import { createRegistryService, DEFAULT_ACCOUNT, defaultScript, generateApiKey } from "../services/registry/service.js";
import { createRegistryStore } from "../services/registry/store.js";
import { headers, type RunClaims } from "../services/shared/auth.js";
import { errorMetadata } from "../services/shared/errors.js";
import { fromValue, toValue } from "../services/shared/json.js";
import { testDialect, testStoreLocation } from "./databases.js";

const serviceSecret = "registry-service-test-secret";
const database = await testStoreLocation();
const store = await createRegistryStore(database.location);
const liveRuns = new Set<string>();
const registryOptions = {
  store,
  serviceSecret,
  python: process.env.SHAKER_PYTHON ?? "python3",
  defaultTimeoutSeconds: 300,
  maxTimeoutSeconds: 600,
  runIsLive: (runId: string) => liveRuns.has(runId),
};
const registry = createRegistryService(registryOptions);
const client = createClient(
  RegistryService,
  createRouterTransport((router) => router.service(RegistryService, registry.impl)),
);

afterAll(async () => {
  registry.close();
  await store.close();
  await database.release();
});

// The default account and its key, as the first start makes them.
const adminAccount = await store.ensureAccount(DEFAULT_ACCOUNT, true);
const adminKey = generateApiKey();
await store.insertKey(adminAccount.id, adminKey);

const as = (key: string): CallOptions => ({ headers: { authorization: `Bearer ${key}` } });
const asService = (accountId = ""): CallOptions => ({ headers: { [headers.serviceToken]: serviceSecret, [headers.account]: accountId } });

/** asRun calls with the token the Executor would give a run of `versionId` (live unless said otherwise). */
function asRun(accountId: string, versionId: string, runId: string, live = true): CallOptions {
  if (live) liveRuns.add(runId);
  const claims: RunClaims = {
    account: accountId,
    workflow: "any",
    version: "1.0.0",
    versionId,
    run: runId,
    session: "sess",
    datastores: [],
    depth: 0,
    exp: Date.now() + 60_000,
  };
  return { headers: { authorization: `Bearer ${registry.auth.mintRunToken(claims)}` } };
}

/** refusal is the code and message a call fails with, or "ok". */
async function refusal(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

/** newAccount makes an account with one key, through the RPC an admin uses. */
async function newAccount(name: string, admin = false): Promise<{ key: string; accountId: string }> {
  const created = await client.createApiKey({ accountName: name, admin }, as(adminKey));
  return { key: created.apiKey, accountId: (await store.accountByName(name))!.id };
}

/** UploadFields are an upload request's fields, each optional. */
type UploadFields = Partial<Exclude<MessageInitShape<typeof UploadWorkflowRequestSchema>, { $typeName: string }>>;

const says = (text: string) => `def execute(ctx):\n    return ${JSON.stringify(text)}\n`;

describe("who may call what", () => {
  it("refuses a call without credentials, with a wrong service secret, or with an unknown key", async () => {
    expect(await refusal(client.listWorkflows({}))).toBe(Code.Unauthenticated);
    expect(await refusal(client.listWorkflows({}, { headers: { [headers.serviceToken]: "not-the-secret" } }))).toBe(Code.Unauthenticated);
    expect(await refusal(client.listWorkflows({}, as("sk-shaker-unknown")))).toBe(Code.Unauthenticated);
    expect(await refusal(client.listWorkflows({}, as(adminKey)))).toBe("ok");
  });

  it("answers Authenticate to services only, with the key's account", async () => {
    const { key, accountId } = await newAccount("authn");
    const resp = await client.authenticate({ apiKey: key }, asService());
    expect(resp.account).toMatchObject({ id: accountId, name: "authn", admin: false });
    expect(resp.keyId).toBe((await store.ownerOfKey(key))!.key.id);
    expect(await refusal(client.authenticate({ apiKey: "sk-shaker-nope" }, asService()))).toBe(Code.Unauthenticated);
    expect(await refusal(client.authenticate({ apiKey: key }, as(adminKey)))).toBe(Code.PermissionDenied);
    expect(await refusal(client.authenticate({ apiKey: key }, asRun(accountId, "ver_x", "run_authn")))).toBe(Code.PermissionDenied);
  });

  it("lets admins manage every account's keys and others only their own", async () => {
    const plain = await newAccount("plain");
    const other = await newAccount("other");
    // Only the hash is stored.
    const stored = JSON.stringify(await store.allKeys());
    expect(stored).not.toContain(plain.key);
    expect(stored).toContain(plain.key.slice(0, 14));

    expect(await refusal(client.createApiKey({ accountName: "plain" }, as(plain.key)))).toBe(Code.PermissionDenied);
    expect(await refusal(client.listApiKeys({ allAccounts: true }, as(plain.key)))).toBe(Code.PermissionDenied);
    expect(await refusal(client.listApiKeys({ accountName: "other" }, as(plain.key)))).toBe(Code.PermissionDenied);
    // Whether another account exists is not a non-admin's to learn.
    expect(await refusal(client.listApiKeys({ accountName: "ghost" }, as(plain.key)))).toBe(Code.PermissionDenied);
    expect(await refusal(client.listApiKeys({ accountName: "ghost" }, as(adminKey)))).toBe(Code.NotFound);
    expect(await refusal(client.listApiKeys({ accountName: "plain", allAccounts: true }, as(adminKey)))).toBe(Code.InvalidArgument);
    expect((await client.listApiKeys({ accountName: "plain" }, as(plain.key))).keys.map((k) => k.accountName)).toEqual(["plain"]);
    expect((await client.listApiKeys({}, as(plain.key))).keys).toHaveLength(1);
    const all = await client.listApiKeys({ allAccounts: true }, as(adminKey));
    expect(new Set(all.keys.map((k) => k.accountName))).toEqual(new Set([DEFAULT_ACCOUNT, "plain", "other", "authn"]));

    // Another account's key is "not found" to a non-admin, like a key that does not exist.
    const otherKeyId = (await store.ownerOfKey(other.key))!.key.id;
    expect(await refusal(client.revokeApiKey({ keyId: otherKeyId }, as(plain.key)))).toBe(Code.NotFound);
    expect(await refusal(client.revokeApiKey({ keyId: "key_nope" }, as(plain.key)))).toBe(Code.NotFound);
    expect(await refusal(client.listWorkflows({}, as(other.key)))).toBe("ok");
    // An admin revokes it by its prefix; it is refused from the next call on (the Registry keeps no cache).
    const revoked = await client.revokeApiKey({ keyId: other.key.slice(0, 14) }, as(adminKey));
    expect(revoked.key).toMatchObject({ id: otherKeyId, accountName: "other" });
    expect(revoked.key!.revokedAt).toBeDefined();
    expect(await refusal(client.listWorkflows({}, as(other.key)))).toBe(Code.Unauthenticated);
  });

  it("never turns an existing account into an admin one, and refuses a bad account name", async () => {
    await newAccount("stays-plain");
    const err = await client
      .createApiKey({ accountName: "stays-plain", admin: true }, as(adminKey))
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((await store.accountByName("stays-plain"))!.admin).toBe(false);
    expect(await refusal(client.createApiKey({ accountName: "Bad Name" }, as(adminKey)))).toBe(Code.InvalidArgument);
    expect(await store.accountByName("Bad Name")).toBeUndefined();
    // An account made admin at creation manages other accounts' keys.
    const ops = await newAccount("ops", true);
    expect(await refusal(client.listApiKeys({ accountName: "stays-plain" }, as(ops.key)))).toBe("ok");
  });

  it("gives a run's token its own version's accessories, only while the run lives, and nothing to manage", async () => {
    const owner = await newAccount("run-owner");
    const up = await client.uploadWorkflow(
      { workflowRefName: "with-acc", script: says("x"), accessories: [{ key: "Plan-A", content: toValue({ tier: 1 }) }] },
      as(owner.key),
    );
    const other = await client.uploadWorkflow(
      { workflowRefName: "sibling", script: says("y"), accessories: [{ key: "plan_a", content: toValue(2) }] },
      as(owner.key),
    );
    const run = asRun(owner.accountId, up.versionId, "run_live");
    // Keys are matched case-insensitively with '-' and '_' alike, and answered as uploaded.
    const got = await client.getAccessory({ versionId: up.versionId, key: "plan_a" }, run);
    expect(got.accessory!.key).toBe("Plan-A");
    expect(fromValue(got.accessory!.content!)).toEqual({ tier: 1 });
    expect(await refusal(client.getAccessory({ versionId: up.versionId, key: "missing" }, run))).toBe(Code.NotFound);
    // Another version of the same account is "not found" to the run, though its account could read it.
    expect(await refusal(client.getAccessory({ versionId: other.versionId, key: "plan_a" }, run))).toBe(Code.NotFound);
    expect(await refusal(client.getAccessory({ versionId: other.versionId, key: "plan_a" }, as(owner.key)))).toBe("ok");
    for (const call of [
      client.uploadWorkflow({ workflowRefName: "planted", script: says("z") }, run),
      client.getWorkflow({ workflowRefName: "with-acc" }, run),
      client.listWorkflows({}, run),
      client.deleteWorkflow({ workflowRefName: "with-acc" }, run),
      client.resolveWorkflow({ workflowRefName: "sibling" }, run),
      client.listApiKeys({}, run),
      client.revokeApiKey({ keyId: "key_x" }, run),
      client.createApiKey({ accountName: "run-owner" }, run),
    ]) {
      expect(await refusal(call)).toBe(Code.PermissionDenied);
    }
    // Once the Executor says the run has ended, its token is refused.
    liveRuns.delete("run_live");
    const ended = await client.getAccessory({ versionId: up.versionId, key: "plan_a" }, run).catch((e: unknown) => ConnectError.from(e));
    expect(ended).toMatchObject({ code: Code.Unauthenticated, rawMessage: "the run this token was given to has ended" });
    // A token minted with another secret is no token.
    const forged = createRegistryService({
      store,
      serviceSecret: "another-secret",
      python: "python3",
      defaultTimeoutSeconds: 1,
      maxTimeoutSeconds: 1,
    });
    const token = forged.auth.mintRunToken({
      account: owner.accountId,
      workflow: "w",
      version: "1.0.0",
      versionId: up.versionId,
      run: "run_live",
      session: "s",
      datastores: [],
      depth: 0,
      exp: Date.now() + 60_000,
    });
    forged.close();
    liveRuns.add("run_live");
    expect(await refusal(client.getAccessory({ versionId: up.versionId, key: "plan_a" }, as(token)))).toBe(Code.Unauthenticated);
  });
});

describe("workflows and versions", () => {
  it("numbers versions by bump, runs the latest published one, and pins by number or id", async () => {
    const { key } = await newAccount("versions");
    const v = async (text: string, more: UploadFields = {}) =>
      (await client.uploadWorkflow({ workflowRefName: "seq", script: says(text), ...more }, as(key))).version;
    expect(
      await v("one", {
        timeoutSeconds: 30,
        executionMode: ExecutionMode.STREAM,
        env: { MODE: "a" },
        datastores: [{ name: "docs", write: true }],
      }),
    ).toBe("1.0.0");
    expect(await v("two")).toBe("1.1.0");
    expect(await v("three", { versionBump: VersionBump.PATCH })).toBe("1.1.1");
    expect(await v("four", { versionBump: VersionBump.MAJOR })).toBe("2.0.0");
    expect(await v("draft", { publishVersion: false })).toBe("2.1.0");

    const resolve = async (version = "", versionId = "") =>
      (await client.resolveWorkflow({ workflowRefName: "seq", version, versionId }, as(key))).version!;
    expect((await resolve()).script).toBe(says("four"));
    expect((await resolve("2.1.0")).script).toBe(says("draft"));
    const first = await resolve("1.0.0");
    expect(first).toMatchObject({ version: "1.0.0", timeoutSeconds: 30, executionMode: ExecutionMode.STREAM, env: { MODE: "a" } });
    expect(first.datastores.map((d) => [d.name, d.write])).toEqual([["docs", true]]);
    expect((await resolve("1.1.0")).timeoutSeconds).toBe(300); // the default
    expect((await resolve("", first.versionId)).script).toBe(says("one"));
    expect(await refusal(resolve("9.9.9"))).toBe(Code.NotFound);
    expect(await refusal(resolve("not-a-version"))).toBe(Code.NotFound);

    const got = (await client.getWorkflow({ workflowRefName: "seq" }, as(key))).workflow!;
    expect(got.latestVersion).toBe("2.0.0");
    expect(got.versions.map((x) => [x.version, x.published])).toEqual([
      ["2.1.0", false],
      ["2.0.0", true],
      ["1.1.1", true],
      ["1.1.0", true],
      ["1.0.0", true],
    ]);
    expect(got.versions.every((x) => x.script === "")).toBe(true); // listings leave scripts out

    // A workflow with only an unpublished version has nothing to run by name.
    await client.uploadWorkflow({ workflowRefName: "draft-only", script: says("d"), publishVersion: false }, as(key));
    expect(await refusal(client.resolveWorkflow({ workflowRefName: "draft-only" }, as(key)))).toBe(Code.NotFound);
    expect((await client.getWorkflow({ workflowRefName: "draft-only" }, as(key))).workflow!.latestVersion).toBe("");
  });

  it("reads a workflow once for the invokes that miss its cached version together, and afresh after an upload", async () => {
    // A Registry of its own, over the same store, counting the store's reads of latest versions.
    let reads = 0;
    const counted = new Proxy(store, {
      get(target, name, receiver) {
        const value = Reflect.get(target, name, receiver);
        if (name !== "latestVersion") return typeof value === "function" ? value.bind(target) : value;
        return (...args: unknown[]) => {
          reads++;
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    const own = createRegistryService({ ...registryOptions, store: counted });
    const ownClient = createClient(
      RegistryService,
      createRouterTransport((router) => router.service(RegistryService, own.impl)),
    );
    try {
      const { key } = await newAccount("herd");
      await ownClient.uploadWorkflow({ workflowRefName: "herd", script: says("one") }, as(key));
      const resolveAll = () =>
        Promise.all(Array.from({ length: 20 }, () => ownClient.resolveWorkflow({ workflowRefName: "herd" }, as(key))));
      const before = reads;
      const first = await resolveAll();
      expect(first.map((r) => r.version!.script)).toEqual(Array(20).fill(says("one")));
      expect(reads - before).toBe(1);
      // An upload made while a read is in flight: the invokes after it read again, and see it.
      const stale = resolveAll();
      const upload = ownClient.uploadWorkflow({ workflowRefName: "herd", script: says("two") }, as(key));
      await upload;
      await stale;
      const after = await resolveAll();
      expect(after.map((r) => r.version!.script)).toEqual(Array(20).fill(says("two")));
    } finally {
      own.close();
    }
  });

  it("resolves what was uploaded last, and a deleted workflow only by version id (for runs in flight)", async () => {
    const { key } = await newAccount("cache");
    const resolve = async () => (await client.resolveWorkflow({ workflowRefName: "flow" }, as(key))).version!;
    const first = await client.uploadWorkflow({ workflowRefName: "flow", script: says("old") }, as(key));
    expect((await resolve()).script).toBe(says("old"));
    expect((await resolve()).script).toBe(says("old")); // kept while nothing is written
    await client.uploadWorkflow({ workflowRefName: "flow", script: says("new") }, as(key));
    expect((await resolve()).script).toBe(says("new"));
    expect((await client.deleteWorkflow({ workflowRefName: "flow" }, as(key))).workflowRefName).toBe("flow");
    expect(await refusal(resolve())).toBe(Code.NotFound);
    expect(await refusal(client.getWorkflow({ workflowRefName: "flow" }, as(key)))).toBe(Code.NotFound);
    expect(await refusal(client.deleteWorkflow({ workflowRefName: "flow" }, as(key)))).toBe(Code.NotFound);
    expect((await client.resolveWorkflow({ versionId: first.versionId }, as(key))).version!.script).toBe(says("old"));
    // Uploading the name again starts a new workflow at 1.0.0.
    const again = await client.uploadWorkflow({ workflowRefName: "flow", script: says("again") }, as(key));
    expect(again).toMatchObject({ version: "1.0.0", created: true });
    expect((await resolve()).script).toBe(says("again"));
  });

  it("keeps each account's workflows, versions and accessories to itself", async () => {
    const a = await newAccount("tenant-a");
    const b = await newAccount("tenant-b");
    const up = await client.uploadWorkflow(
      { workflowRefName: "mine", script: says("A"), accessories: [{ key: "k", content: toValue("secret") }] },
      as(a.key),
    );
    expect(await refusal(client.getWorkflow({ workflowRefName: "mine" }, as(b.key)))).toBe(Code.NotFound);
    expect(await refusal(client.resolveWorkflow({ workflowRefName: "mine" }, as(b.key)))).toBe(Code.NotFound);
    expect(await refusal(client.resolveWorkflow({ versionId: up.versionId }, as(b.key)))).toBe(Code.NotFound);
    expect(await refusal(client.getAccessory({ versionId: up.versionId, key: "k" }, as(b.key)))).toBe(Code.NotFound);
    expect(await refusal(client.deleteWorkflow({ workflowRefName: "mine" }, as(b.key)))).toBe(Code.NotFound);
    expect((await client.listWorkflows({}, as(b.key))).total).toBe(0);
    // B's own "mine" is another workflow; A's is untouched.
    expect(await client.uploadWorkflow({ workflowRefName: "mine", script: says("B") }, as(b.key))).toMatchObject({
      version: "1.0.0",
      created: true,
    });
    expect((await client.resolveWorkflow({ workflowRefName: "mine" }, as(a.key))).version!.script).toBe(says("A"));
    // A service call acts for the account it names.
    expect((await client.resolveWorkflow({ workflowRefName: "mine" }, asService(b.accountId))).version!.script).toBe(says("B"));
  });

  it("lists workflows newest first in pages, and refuses a page out of bounds", async () => {
    const { key } = await newAccount("pages");
    for (const name of ["w1", "w2", "w3"]) await client.uploadWorkflow({ workflowRefName: name, script: says(name) }, as(key));
    await client.uploadWorkflow({ workflowRefName: "w1", script: says("w1 again") }, as(key)); // w1 is now the newest
    const page = (offset: number, limit: number) => client.listWorkflows({ offset, limit }, as(key));
    expect((await page(0, 0)).workflows.map((w) => w.workflowRefName)).toEqual(["w1", "w3", "w2"]);
    expect(await page(1, 1)).toMatchObject({ total: 3, workflows: [{ workflowRefName: "w3", latestVersion: "1.0.0" }] });
    expect((await page(3, 10)).workflows).toEqual([]);
    expect(await refusal(page(-1, 10))).toBe(Code.InvalidArgument);
    expect(await refusal(page(0, 101))).toBe(Code.InvalidArgument);
    expect(await refusal(page(0, 100))).toBe("ok");
  });

  it("refuses an invalid script with every problem's line and column, storing nothing", async () => {
    const { key } = await newAccount("validation");
    const bad = "async def execute(ctx):\n    return 1\n\ndef helper(:\n";
    const err = await client.uploadWorkflow({ workflowRefName: "bad", script: bad }, as(key)).catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.InvalidArgument });
    expect((err as ConnectError).rawMessage).toMatch(/^the script is not a valid workflow:\nline \d+, column \d+: /);
    expect(await refusal(client.getWorkflow({ workflowRefName: "bad" }, as(key)))).toBe(Code.NotFound);
    expect(await refusal(client.uploadWorkflow({ workflowRefName: "slow", script: says("x"), timeoutSeconds: 601 }, as(key)))).toBe(
      Code.InvalidArgument,
    );
    expect(await refusal(client.uploadWorkflow({ workflowRefName: "Bad Name", script: says("x") }, as(key)))).toBe(Code.InvalidArgument);
    expect((await client.listWorkflows({}, as(key))).total).toBe(0);
    // What ValidateWorkflow says of a script, and of the default script it hands out.
    const verdict = await client.validateWorkflow({ code: bad }, as(key));
    expect(verdict.ok).toBe(false);
    expect(verdict.errors.length).toBeGreaterThan(0);
    expect(verdict.errors.every((e) => e.line > 0)).toBe(true);
    const { script } = await client.getDefaultScript({}, as(key));
    expect(script).toBe(defaultScript);
    expect(await client.validateWorkflow({ code: script }, as(key))).toMatchObject({ ok: true, errors: [] });
    const tooBig = await client.validateWorkflow({ code: "#".repeat(1024 * 1024 + 1) }, as(key));
    expect(tooBig.errors.map((e) => e.message)).toEqual([`script is larger than ${1024 * 1024} bytes`]);
  });
});

describe("what the database takes", () => {
  it("refuses NUL characters in text, naming the field (PostgreSQL's text cannot hold them)", async () => {
    const { key } = await newAccount("nul");
    const field = async (call: Promise<unknown>) => {
      const e = await call.then(
        () => undefined,
        (x: unknown) => ConnectError.from(x),
      );
      return e && { code: e.code, param: e.metadata.get(errorMetadata.param) };
    };
    const upload = (more: UploadFields) => client.uploadWorkflow({ workflowRefName: "nul", script: says("x"), ...more }, as(key));
    expect(await field(upload({ script: `${says("x")}# \0\n` }))).toEqual({ code: Code.InvalidArgument, param: "script" });
    expect(await field(upload({ workflowName: "a\0b" }))).toEqual({ code: Code.InvalidArgument, param: "workflow_name" });
    expect(await field(upload({ description: "\0" }))).toEqual({ code: Code.InvalidArgument, param: "description" });
    expect(await field(upload({ versionNotes: "\0" }))).toEqual({ code: Code.InvalidArgument, param: "version_notes" });
    expect(await field(upload({ accessories: [{ key: "k\0", content: toValue(1) }] }))).toEqual({
      code: Code.InvalidArgument,
      param: "accessories[0].key",
    });
    // JSON keeps a NUL escaped: an accessory's content may hold one.
    const up = await upload({ accessories: [{ key: "k", content: toValue({ "a\0": "b\0" }) }] });
    const accessory = await client.getAccessory({ versionId: up.versionId, key: "k" }, as(key));
    expect(fromValue(accessory.accessory!.content!)).toEqual({ "a\0": "b\0" });
    expect(await field(client.resolveWorkflow({ versionId: "ver_\0" }, as(key)))).toEqual({
      code: Code.InvalidArgument,
      param: "version_id",
    });
    expect(await field(client.getAccessory({ versionId: up.versionId, key: "\0" }, as(key)))).toEqual({
      code: Code.InvalidArgument,
      param: "key",
    });
    expect(await field(client.revokeApiKey({ keyId: "key_\0" }, as(key)))).toEqual({ code: Code.InvalidArgument, param: "key_id" });
    expect(await field(client.listApiKeys({ accountName: "a\0" }, as(adminKey)))).toEqual({
      code: Code.InvalidArgument,
      param: "account_name",
    });
  });

  it("numbers uploads made at once one after another", async () => {
    const { key } = await newAccount("at-once");
    const uploads = await Promise.all(
      [1, 2, 3, 4, 5].map((n) => client.uploadWorkflow({ workflowRefName: "busy", script: says(`n${n}`) }, as(key))),
    );
    expect(uploads.map((u) => u.version).sort()).toEqual(["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]);
    expect(uploads.filter((u) => u.created)).toHaveLength(1);
  });

  it.skipIf(testDialect !== "postgresql")(
    "serves a version uploaded through another Registry on the same database within a second",
    async () => {
      const otherStore = await createRegistryStore(database.location);
      const other = createRegistryService({
        store: otherStore,
        serviceSecret,
        python: "python3",
        defaultTimeoutSeconds: 1,
        maxTimeoutSeconds: 1,
      });
      const otherClient = createClient(RegistryService, createRouterTransport(other.routes));
      try {
        const { key } = await newAccount("shared");
        const resolveThere = async () => (await otherClient.resolveWorkflow({ workflowRefName: "shared" }, as(key))).version!.script;
        await client.uploadWorkflow({ workflowRefName: "shared", script: says("old") }, as(key));
        expect(await resolveThere()).toBe(says("old"));
        await client.uploadWorkflow({ workflowRefName: "shared", script: says("new") }, as(key));
        const uploaded = Date.now();
        while ((await resolveThere()) !== says("new")) {
          expect(Date.now() - uploaded).toBeLessThan(1000);
          await new Promise((r) => setTimeout(r, 20));
        }
      } finally {
        other.close();
        await otherStore.close();
      }
    },
  );
});
