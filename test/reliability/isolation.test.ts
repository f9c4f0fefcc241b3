// Isolation: account A's workflows, versions, accessories, runs, sessions, datastores, records, keys
// and model calls are out of reach of every other credential.
//
// 1. Every REST route (read from the edge's router) and every RPC of the four services (read from the
//    generated descriptors) is called with another account's key, with an admin account's key (for
//    all but key management, which admins may do), with no key and with a guessed service token,
//    aimed at A's resources: each is refused, or answers with the caller's own (empty) data, and no
//    answer contains any of A's data. A route or RPC added later without an attack here fails the test.
// 2. Every RPC a workflow's child reaches through ctx is called with real run tokens, handed out by
//    real workflows that are still running: another account's, another workflow's of the same
//    account, another server's, and A's own with its payload edited (expiry earlier or later,
//    account changed) or its signature replaced; and, on every route and RPC, the token of A's run
//    that has ended. Expired tokens are refused at the unit level in test/auth.test.ts; a run token's
//    datastore bindings (read-only, unbound stores) are covered by test/datastore-scope.test.ts.
import { randomBytes } from "node:crypto";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ClusterService } from "../../gen/shaker/cluster/v1/cluster_pb.js";
import { DatastoreService } from "../../gen/shaker/datastore/v1/datastore_pb.js";
import { ExecutorService } from "../../gen/shaker/executor/v1/executor_pb.js";
import { ModelProxyService } from "../../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { RegistryService } from "../../gen/shaker/registry/v1/registry_pb.js";
import { createEdge } from "../../services/edge/edge.js";
import type { Clients } from "../../services/shared/clients.js";
import { fromValue, toValue } from "../../services/shared/json.js";
import { startTestServer, type TestServer } from "../helpers.js";

const services: DescService[] = [RegistryService, ExecutorService, ModelProxyService, DatastoreService, ClusterService];
const mark = randomBytes(4).toString("hex");

/**
 * The workflow every token-handing test uses: it returns its own run token (held by its RPC client,
 * services/executor/harness/shaker/rpc.py) and ids; with input {"hold": true} it emits them and keeps
 * running, since a run's token is refused once the run has ended.
 */
const leakScript = (note: string) => `
import time

def execute(ctx):
    token = next(t for t in (getattr(o, "_token", None) for o in [ctx, *vars(ctx).values()]) if isinstance(t, str) and t.startswith("srt."))
    info = {"token": token, "run": ctx.run_id, "session": ctx.session_id, "note": "${note}"}
    if (ctx.input or {}).get("hold"):
        ctx.emit(info)
        time.sleep(600)
    return info
`;

/** Alice is account A: the resources every attack aims at, and every string that must not leak. */
interface Alice {
  key: string;
  keyId: string;
  keyPrefix: string;
  accountId: string;
  accountName: string;
  ref: string;
  otherRef: string;
  versionId: string;
  otherVersionId: string;
  store: string;
  recordId: string;
  recordText: string;
  accessoryText: string;
  envText: string;
  inputText: string;
  describeText: string;
  runId: string;
  /** tokenRunId is the live run whose token is `token`; `endedToken` is the token of the ended run `runId`. */
  tokenRunId: string;
  endedToken: string;
  /** liveRunId is a run of Alice's still in flight, so a cancel would take effect. */
  liveRunId: string;
  sessionId: string;
  token: string;
  otherToken: string;
  callId: string;
}

/** Outcome is what a call answered: a status (HTTP) or code (Connect), and all the text it sent back. */
interface Outcome {
  status?: number;
  code?: Code;
  text: string;
}

/** A REST attack: what to send, and whether it must be refused or may answer with the caller's own data. `adminMay` exempts admins. */
interface RestAttack {
  path: string;
  body?: unknown;
  expect: Phase;
  adminMay?: boolean;
}

/**
 * Phase orders the attacks: refusals first, then reads that answer with the caller's own data, then
 * calls that create the caller's own things under Alice's names (a workflow, a store, model calls
 * naming her session), after which the caller's own things rightly answer to those names.
 */
type Phase = "refused" | "scoped" | "creates";
const phases: Phase[] = ["refused", "scoped", "creates"];

/** An RPC attack: the requests to send, and the same choice. `adminMay` exempts admins (key management). */
interface RpcAttack {
  requests: unknown[];
  expect: Phase;
  adminMay?: boolean;
}

const restAttacks: Record<string, (a: Alice) => RestAttack> = {
  "POST /v1/chat/completions": (a) => ({
    path: "/v1/chat/completions",
    body: { model: `workflow:${a.ref}`, input: {} },
    expect: "refused",
  }),
  "POST /v1/workflows/upload": (a) => ({
    path: "/v1/workflows/upload",
    body: { workflow_ref_name: a.ref, script: "def execute(ctx):\n    return 'mallory'\n" },
    expect: "creates",
  }),
  "POST /v1/workflows/validate": () => ({ path: "/v1/workflows/validate", body: { code: leakScript("x") }, expect: "scoped" }),
  "GET /v1/workflows/default-script": () => ({ path: "/v1/workflows/default-script", expect: "scoped" }),
  "GET /v1/workflows": () => ({ path: "/v1/workflows", expect: "scoped" }),
  "GET /v1/workflows/:ref": (a) => ({ path: `/v1/workflows/${a.ref}`, expect: "refused" }),
  "DELETE /v1/workflows/:ref": (a) => ({ path: `/v1/workflows/${a.ref}`, expect: "refused" }),
  "GET /v1/runs": (a) => ({ path: `/v1/runs?workflow=${a.ref}&session_id=${a.sessionId}`, expect: "scoped" }),
  "GET /v1/runs/:id": (a) => ({ path: `/v1/runs/${a.liveRunId}`, expect: "refused" }),
  "GET /v1/runs/:id/events": (a) => ({ path: `/v1/runs/${a.liveRunId}/events`, expect: "refused" }),
  "POST /v1/responses": (a) => ({ path: "/v1/responses", body: { model: `workflow:${a.ref}`, input: "hi" }, expect: "refused" }),
  "POST /v1/runs/:id/cancel": (a) => ({ path: `/v1/runs/${a.liveRunId}/cancel`, expect: "refused" }),
  "POST /v1/datastores": (a) => ({ path: "/v1/datastores", body: { name: a.store }, expect: "creates" }),
  "GET /v1/datastores": () => ({ path: "/v1/datastores", expect: "scoped" }),
  "DELETE /v1/datastores/:name": (a) => ({ path: `/v1/datastores/${a.store}`, expect: "refused" }),
  "POST /v1/datastores/:name/records": (a) => ({
    path: `/v1/datastores/${a.store}/records`,
    body: { records: [{ id: a.recordId, text: "mallory was here", vector: [0, 1] }] },
    expect: "refused",
  }),
  "GET /v1/datastores/:name/records/:id": (a) => ({ path: `/v1/datastores/${a.store}/records/${a.recordId}`, expect: "refused" }),
  "DELETE /v1/datastores/:name/records/:id": (a) => ({ path: `/v1/datastores/${a.store}/records/${a.recordId}`, expect: "refused" }),
  "POST /v1/datastores/:name/search": (a) => ({ path: `/v1/datastores/${a.store}/search`, body: { query: "alice" }, expect: "refused" }),
  "GET /v1/sessions/:id": (a) => ({ path: `/v1/sessions/${a.sessionId}`, expect: "refused" }),
  "GET /v1/models": () => ({ path: "/v1/models", expect: "scoped" }),
  "GET /v1/models/:id": (a) => ({ path: `/v1/models/workflow:${a.ref}`, expect: "refused" }),
  // Server-wide call counters: no account's data, but every account's activity; for operators.
  "GET /v1/metrics": () => ({ path: "/v1/metrics", expect: "refused", adminMay: true }),
  // The cluster's nodes: no account's data, but the operator's topology.
  "GET /v1/cluster": () => ({ path: "/v1/cluster", expect: "refused", adminMay: true }),
  "POST /v1/embeddings": () => ({ path: "/v1/embeddings", body: { input: ["hello"] }, expect: "creates" }),
};

const invocation = (a: Alice) => ({ workflowRefName: a.ref, input: { kind: { case: "stringValue", value: "x" } } });
const callContext = (a: Alice) => ({ sessionId: a.sessionId, runId: a.runId, workflowRefName: a.ref });

const rpcAttacks: Record<string, (a: Alice) => RpcAttack> = {
  "RegistryService/Authenticate": (a) => ({ requests: [{ apiKey: a.key }], expect: "refused" }),
  "RegistryService/CreateApiKey": (a) => ({ requests: [{ accountName: a.accountName }], expect: "refused", adminMay: true }),
  "RegistryService/ListApiKeys": (a) => ({
    requests: [{ accountName: a.accountName }, { allAccounts: true }],
    expect: "refused",
    adminMay: true,
  }),
  "RegistryService/RevokeApiKey": (a) => ({ requests: [{ keyId: a.keyId }, { keyId: a.keyPrefix }], expect: "refused", adminMay: true }),
  "RegistryService/UploadWorkflow": (a) => ({
    requests: [{ workflowRefName: a.ref, script: "def execute(ctx):\n    return 'mallory'\n" }],
    expect: "creates",
  }),
  "RegistryService/ValidateWorkflow": () => ({ requests: [{ code: leakScript("x") }], expect: "scoped" }),
  "RegistryService/GetWorkflow": (a) => ({ requests: [{ workflowRefName: a.ref }], expect: "refused" }),
  "RegistryService/ListWorkflows": () => ({ requests: [{}], expect: "scoped" }),
  "RegistryService/DeleteWorkflow": (a) => ({ requests: [{ workflowRefName: a.ref }], expect: "refused" }),
  "RegistryService/ResolveWorkflow": (a) => ({
    requests: [{ workflowRefName: a.ref }, { versionId: a.versionId }, { workflowRefName: a.ref, version: "1.0.0" }],
    expect: "refused",
  }),
  "RegistryService/GetAccessory": (a) => ({ requests: [{ versionId: a.versionId, key: "alice-acc" }], expect: "refused" }),
  "RegistryService/GetDefaultScript": () => ({ requests: [{}], expect: "scoped" }),
  "ExecutorService/Run": (a) => ({ requests: [{ invocation: invocation(a) }], expect: "refused" }),
  "ExecutorService/RunStream": (a) => ({ requests: [{ invocation: invocation(a) }], expect: "refused" }),
  "ExecutorService/StartRun": (a) => ({ requests: [{ invocation: invocation(a) }], expect: "refused" }),
  "ExecutorService/GetRun": (a) => ({ requests: [{ runId: a.runId }, { runId: a.liveRunId }], expect: "refused" }),
  "ExecutorService/ListRuns": (a) => ({ requests: [{ sessionId: a.sessionId }, { workflowRefName: a.ref }, {}], expect: "scoped" }),
  "ExecutorService/CancelRun": (a) => ({ requests: [{ runId: a.runId }, { runId: a.liveRunId }], expect: "refused" }),
  "ExecutorService/WatchRun": (a) => ({ requests: [{ runId: a.runId }, { runId: a.liveRunId }], expect: "refused" }),
  // A run's liveness, for the services' own credential only.
  "ExecutorService/CheckRun": (a) => ({ requests: [{ runId: a.liveRunId }], expect: "refused", adminMay: false }),
  // ctx.http on a run's behalf: for run tokens only, whatever the key.
  "ExecutorService/Fetch": () => ({ requests: [{ url: "https://example.com/" }], expect: "refused", adminMay: false }),
  // The cluster's membership: a key that could heartbeat could list a fake executor for the edges to
  // send runs to, or make a real one leave; only the services' own credential may.
  "ClusterService/Heartbeat": () => ({
    requests: [{ node: { id: "mallory-executor", services: ["executor"], url: "http://127.0.0.1:9", capacity: 1000 } }],
    expect: "refused",
    adminMay: false,
  }),
  "ClusterService/Leave": () => ({ requests: [{ id: "mallory-executor" }], expect: "refused", adminMay: false }),
  "ClusterService/ListNodes": () => ({ requests: [{}], expect: "refused", adminMay: true }),
  "ModelProxyService/ChatCompletion": (a) => ({
    requests: [{ body: { messages: [{ role: "user", content: "hi" }] }, context: callContext(a) }],
    expect: "creates",
  }),
  "ModelProxyService/ChatCompletionStream": (a) => ({
    requests: [{ body: { messages: [{ role: "user", content: "hi" }] }, context: callContext(a) }],
    expect: "creates",
  }),
  "ModelProxyService/Embeddings": (a) => ({ requests: [{ body: { input: ["hi"] }, context: callContext(a) }], expect: "creates" }),
  "ModelProxyService/GetMetrics": () => ({ requests: [{}], expect: "refused", adminMay: true }),
  "ModelProxyService/ListModels": () => ({ requests: [{}], expect: "scoped" }),
  "ModelProxyService/ListCalls": (a) => ({
    requests: [{ sessionId: a.sessionId, includeBodies: true }, { runId: a.runId }, { workflowRefName: a.ref }, {}],
    expect: "scoped",
  }),
  "DatastoreService/CreateStore": (a) => ({ requests: [{ name: a.store }], expect: "creates" }),
  "DatastoreService/ListStores": () => ({ requests: [{}], expect: "scoped" }),
  "DatastoreService/DeleteStore": (a) => ({ requests: [{ name: a.store }], expect: "refused" }),
  "DatastoreService/UpsertRecords": (a) => ({
    requests: [{ store: a.store, records: [{ id: a.recordId, text: "mallory was here", vector: [0, 1] }] }],
    expect: "refused",
  }),
  "DatastoreService/UpsertRecordsStream": (a) => ({
    requests: [{ store: a.store, records: [{ id: a.recordId, text: "mallory was here", vector: [0, 1] }] }],
    expect: "refused",
  }),
  "DatastoreService/GetRecords": (a) => ({ requests: [{ store: a.store, ids: [a.recordId] }], expect: "refused" }),
  "DatastoreService/DeleteRecords": (a) => ({ requests: [{ store: a.store, ids: [a.recordId] }], expect: "refused" }),
  "DatastoreService/Search": (a) => ({
    requests: [
      { store: a.store, query: "alice" },
      { store: a.store, vector: [1, 0], mode: 2 },
    ],
    expect: "refused",
  }),
};

/** The RPCs a workflow's child makes through ctx (services/executor/harness/shaker/context.py). */
const ctxAttacks: Record<string, (a: Alice) => unknown> = {
  "ModelProxyService/ChatCompletion": (a) => ({ body: { messages: [{ role: "user", content: "hi" }] }, context: callContext(a) }),
  "ModelProxyService/ChatCompletionStream": (a) => ({ body: { messages: [{ role: "user", content: "hi" }] }, context: callContext(a) }),
  "ModelProxyService/Embeddings": (a) => ({ body: { input: ["hi"] }, context: callContext(a) }),
  "DatastoreService/GetRecords": (a) => ({ store: a.store, ids: [a.recordId] }),
  "DatastoreService/Search": (a) => ({ store: a.store, query: "alice" }),
  "DatastoreService/UpsertRecords": (a) => ({ store: a.store, records: [{ id: a.recordId, text: "mallory was here", vector: [0, 1] }] }),
  "RegistryService/GetAccessory": (a) => ({ versionId: a.versionId, key: "alice-acc" }),
  "ExecutorService/Run": (a) => ({ invocation: invocation(a) }),
};

const refusedStatuses = [401, 403, 404];
const refusedCodes = [Code.Unauthenticated, Code.PermissionDenied, Code.NotFound];

function rpcName(service: DescService, method: DescMethod): string {
  return `${service.name}/${method.name}`;
}

function findMethod(name: string): [DescService, DescMethod] {
  for (const s of services) for (const m of s.methods) if (rpcName(s, m) === name) return [s, m];
  throw new Error(`no RPC ${name}`);
}

/** markers are Alice's data: none may appear in an answer to anyone else, unless the request carried it. */
function markers(a: Alice): string[] {
  return [
    a.key,
    a.keyId,
    a.keyPrefix,
    a.accountId,
    a.accountName,
    a.ref,
    a.otherRef,
    a.versionId,
    a.otherVersionId,
    a.store,
    a.recordId,
    a.recordText,
    a.accessoryText,
    a.envText,
    a.inputText,
    a.describeText,
    a.runId,
    a.tokenRunId,
    a.liveRunId,
    a.sessionId,
    a.token,
    a.endedToken,
    a.otherToken,
    a.callId,
    `ALICE-OUT-${mark}`,
  ].filter((m) => m.length >= 6);
}

/**
 * planted holds, per credential, the requests it made that were accepted: an attacker may name Alice's
 * session in its own model calls or reuse her workflow's name for its own workflow, and then rightly
 * sees those names again. A refused request plants nothing.
 */
const planted = new Map<string, string[]>();

/** leaks lists Alice's data in an answer that neither this request nor an earlier accepted one carried. */
function leaks(a: Alice, credential: string, request: string, out: Outcome): string[] {
  const mine = planted.get(credential) ?? [];
  const found = markers(a).filter((m) => !request.includes(m) && !mine.some((r) => r.includes(m)) && out.text.includes(m));
  const accepted = out.status === undefined ? out.code === undefined : out.status < 300;
  if (accepted) planted.set(credential, [...mine, request]);
  return found;
}

/** forge edits a run token's claims and keeps its signature, which then no longer matches. */
function forge(token: string, change: (claims: Record<string, unknown>) => void): string {
  const [payload, signature] = token.slice("srt.".length).split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as Record<string, unknown>;
  change(claims);
  return `srt.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${signature}`;
}

const stringify = (x: unknown) => JSON.stringify(x, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));

describe("isolation between accounts and runs", () => {
  let server: TestServer;
  let other: TestServer;
  let alice: Alice;
  let malloryKey: string;
  let malloryToken: string;
  let otherServerToken: string;
  const transport = () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });

  /** held starts a run of a leakScript workflow that keeps running, and returns what it emitted: its live token. */
  async function held(on: TestServer, key: string, ref: string, sessionId = ""): Promise<{ token: string; run: string; session: string }> {
    const executor = createClient(ExecutorService, createConnectTransport({ baseUrl: on.url, httpVersion: "1.1" }));
    // The stream is left open (never read to its end): the run goes on until the server closes.
    for await (const m of executor.runStream(
      { invocation: { workflowRefName: ref, input: toValue({ hold: true }), sessionId } },
      { headers: bearer(key) },
    )) {
      if (m.event.case === "emitted") return fromValue(m.event.value.value) as { token: string; run: string; session: string };
    }
    throw new Error(`${ref} ended without emitting its token`);
  }

  async function rest(method: string, path: string, credential: Record<string, string>, body?: unknown): Promise<Outcome> {
    const res = await fetch(server.url + path, {
      method,
      headers: { "content-type": "application/json", ...credential },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, text: await res.text() };
  }

  /** rpc calls any method of any service with any credential and gathers everything it answered. */
  async function rpc(name: string, request: unknown, credential: Record<string, string>): Promise<Outcome> {
    const [service, method] = findMethod(name);
    const client = createClient(service, transport()) as unknown as Record<string, (...args: unknown[]) => any>;
    const call = client[method.localName].bind(client);
    const options = { headers: credential };
    const got: unknown[] = [];
    try {
      switch (method.methodKind) {
        case "unary":
          got.push(await call(request, options));
          break;
        case "server_streaming":
          for await (const m of call(request, options) as AsyncIterable<unknown>) got.push(m);
          break;
        case "client_streaming":
          got.push(
            await call(
              (async function* () {
                yield request;
              })(),
              options,
            ),
          );
          break;
        default:
          throw new Error(`${name}: ${method.methodKind} RPCs need a case here`);
      }
      return { text: stringify(got) };
    } catch (e) {
      const err = ConnectError.from(e);
      return { code: err.code, text: stringify(got) + err.rawMessage + stringify([...err.metadata.entries()]) };
    }
  }

  const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

  async function asAlice(method: string, path: string, body?: unknown): Promise<any> {
    const res = await server.request(method, path, body, bearer(alice.key));
    if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body;
  }

  beforeAll(async () => {
    [server, other] = await Promise.all([startTestServer(), startTestServer()]);
    const registry = createClient(RegistryService, transport());
    const admin = { headers: bearer(server.apiKey) };
    const a = await registry.createApiKey({ accountName: `alice-${mark}` }, admin);
    const m = await registry.createApiKey({ accountName: `mallory-${mark}` }, admin);
    malloryKey = m.apiKey;
    alice = {
      key: a.apiKey,
      keyId: a.key!.id,
      keyPrefix: a.key!.prefix,
      accountName: `alice-${mark}`,
      ref: `alice-wf-${mark}`,
      otherRef: `alice-other-${mark}`,
      store: `alice-store-${mark}`,
      recordId: `alice-rec-${mark}`,
      recordText: `ALICE-TEXT-${mark}`,
      accessoryText: `ALICE-ACC-${mark}`,
      envText: `ALICE-ENV-${mark}`,
      inputText: `ALICE-IN-${mark}`,
      describeText: `ALICE-DESC-${mark}`,
      sessionId: `alice-sess-${mark}`,
    } as Alice;
    await asAlice("POST", "/v1/datastores", { name: alice.store });
    await asAlice("POST", `/v1/datastores/${alice.store}/records`, {
      records: [{ id: alice.recordId, text: alice.recordText, vector: [1, 0] }],
    });
    const up = await asAlice("POST", "/v1/workflows/upload", {
      workflow_ref_name: alice.ref,
      script: leakScript(`ALICE-OUT-${mark}`),
      timeout_seconds: 900,
      description: alice.describeText,
      env: { ALICE_ENV: alice.envText },
      accessories: [{ key: "alice-acc", content: { text: alice.accessoryText } }],
      datastores: [{ name: alice.store, write: true }],
    });
    alice.versionId = up.data.version_id;
    const up2 = await asAlice("POST", "/v1/workflows/upload", {
      workflow_ref_name: alice.otherRef,
      script: leakScript(`ALICE-OUT-${mark}`),
      timeout_seconds: 900,
    });
    alice.otherVersionId = up2.data.version_id;
    const run = await asAlice("POST", "/v1/chat/completions", {
      model: `workflow:${alice.ref}`,
      input: { q: alice.inputText },
      session_id: alice.sessionId,
    });
    alice.endedToken = run.output.token;
    alice.runId = run.output.run;
    expect(run.output.session).toBe(alice.sessionId);
    const live = await held(server, alice.key, alice.ref, alice.sessionId);
    alice.token = live.token;
    alice.tokenRunId = live.run;
    alice.otherToken = (await held(server, alice.key, alice.otherRef)).token;
    alice.accountId = (await asAlice("GET", `/v1/runs/${alice.runId}`)).data.account_id;
    await asAlice("POST", "/v1/workflows/upload", {
      workflow_ref_name: `alice-slow-${mark}`,
      script: "import time\n\ndef execute(ctx):\n    time.sleep(600)\n    return 1\n",
      timeout_seconds: 900,
    });
    const started = await createClient(ExecutorService, transport()).startRun(
      {
        invocation: {
          workflowRefName: `alice-slow-${mark}`,
          input: { kind: { case: "stringValue", value: alice.inputText } },
          sessionId: alice.sessionId,
        },
      },
      { headers: bearer(alice.key) },
    );
    alice.liveRunId = started.started!.runId;
    expect(alice.accountId).toBeTruthy();
    // A model call in Alice's session, as her workflow's child would make it (recorded under the token's run).
    const call = await rpc(
      "ModelProxyService/ChatCompletion",
      { body: { messages: [{ role: "user", content: "hello" }] }, context: { sessionId: alice.sessionId, runId: alice.tokenRunId } },
      bearer(alice.token),
    );
    expect(call.code, call.text).toBeUndefined();
    alice.callId = JSON.parse(call.text)[0].callId;
    expect(alice.callId).toBeTruthy();

    // Mallory's workflow is bound to a store named like Alice's, which Mallory does not have.
    const asMallory = bearer(malloryKey);
    const mup = await server.request(
      "POST",
      "/v1/workflows/upload",
      {
        workflow_ref_name: `mallory-wf-${mark}`,
        script: leakScript("mallory"),
        timeout_seconds: 900,
        datastores: [{ name: alice.store, write: true }],
      },
      asMallory,
    );
    expect(mup.status, JSON.stringify(mup.body)).toBe(201);
    malloryToken = (await held(server, malloryKey, `mallory-wf-${mark}`)).token;

    // Another server (another secret) hands out a token for a workflow of the same name.
    await other.upload(alice.ref, leakScript("other server"), { timeout_seconds: 900, datastores: [{ name: alice.store, write: true }] });
    const orun = await other.invoke({ model: `workflow:${alice.ref}`, input: {} });
    expect(orun.status, JSON.stringify(orun.body)).toBe(200);
    otherServerToken = orun.body.output.token;
  }, 120_000);

  afterAll(async () => {
    if (alice?.liveRunId) await server.request("POST", `/v1/runs/${alice.liveRunId}/cancel`, undefined, bearer(alice.key));
    await Promise.all([server?.close(), other?.close()]);
  });

  /** aliceIsIntact checks, as Alice, that nothing of hers was changed or removed. */
  async function aliceIsIntact(): Promise<void> {
    const wf = await asAlice("GET", `/v1/workflows/${alice.ref}`);
    expect(wf.data.versions.map((v: any) => v.version)).toEqual(["1.0.0"]);
    const rec = await asAlice("GET", `/v1/datastores/${alice.store}/records/${alice.recordId}`);
    expect(rec.data.text).toBe(alice.recordText);
    const run = await asAlice("GET", `/v1/runs/${alice.runId}`);
    expect(run.data.output.note).toBe(`ALICE-OUT-${mark}`);
    expect((await asAlice("GET", `/v1/runs/${alice.liveRunId}`)).data.status).toBe("running");
    const session = await asAlice("GET", `/v1/sessions/${alice.sessionId}`);
    expect(session.data.runs).toBe(3); // the ended run, the held one whose token is used, the slow one
    expect(session.data.model_calls).toBe(1);
    const keys = await createClient(RegistryService, transport()).listApiKeys({}, { headers: bearer(alice.key) });
    expect(keys.keys.map((k) => [k.id, k.revokedAt])).toEqual([[alice.keyId, undefined]]);
  }

  describe("run tokens on every RPC a workflow's child reaches", () => {
    it("covers exactly the RPCs the harness calls", () => {
      for (const name of Object.keys(ctxAttacks)) expect(() => findMethod(name)).not.toThrow();
    });

    it("refuses forged tokens with Unauthenticated on each of them", async () => {
      const [payload] = alice.token.slice(4).split(".");
      const forged: Record<string, string> = {
        "expiry moved earlier": forge(alice.token, (c) => (c.exp = Date.now() - 1000)),
        "expiry moved later": forge(alice.token, (c) => (c.exp = Date.now() + 86_400_000)),
        "account changed": forge(malloryToken, (c) => (c.account = alice.accountId)),
        "datastore made writable": forge(alice.otherToken, (c) => (c.datastores = [{ name: alice.store, write: true }])),
        "random signature": `srt.${payload}.${randomBytes(32).toString("base64url")}`,
        "the token of Alice's run that has ended": alice.endedToken,
        "another server's token": otherServerToken,
        "not a token": "srt.garbage",
      };
      const wrong: string[] = [];
      for (const [name, build] of Object.entries(ctxAttacks)) {
        for (const [how, token] of Object.entries(forged)) {
          const request = build(alice);
          const out = await rpc(name, request, bearer(token));
          if (out.code !== Code.Unauthenticated)
            wrong.push(`${name} with ${how}: ${out.code === undefined ? "answered" : Code[out.code]} ${out.text.slice(0, 200)}`);
          const leaked = leaks(alice, token, stringify(request), out);
          if (leaked.length) wrong.push(`${name} with ${how} leaked ${leaked.join(", ")}`);
        }
      }
      expect(wrong).toEqual([]);
      await aliceIsIntact();
    });

    it("refuses another account's valid token on Alice's resources", async () => {
      const wrong: string[] = [];
      for (const [name, build] of Object.entries(ctxAttacks)) {
        const request = build(alice);
        const out = await rpc(name, request, bearer(malloryToken));
        const isModelCall = name.startsWith("ModelProxyService/");
        // A model call is Mallory's own (recorded in her account, checked below); the rest are refused.
        if (!isModelCall && (out.code === undefined || !refusedCodes.includes(out.code)))
          wrong.push(`${name}: ${out.code === undefined ? "answered" : Code[out.code]} ${out.text.slice(0, 200)}`);
        if (isModelCall && out.code !== undefined)
          wrong.push(`${name}: Mallory's own model call failed: ${Code[out.code]} ${out.text.slice(0, 200)}`);
        const leaked = leaks(alice, malloryKey, stringify(request), out);
        if (leaked.length) wrong.push(`${name} leaked ${leaked.join(", ")}`);
      }
      expect(wrong).toEqual([]);
      // Mallory's calls named Alice's session and run; they are Mallory's, and not in Alice's session.
      const calls = await rpc("ModelProxyService/ListCalls", { sessionId: alice.sessionId }, bearer(malloryKey));
      expect(leaks(alice, malloryKey, "", calls)).toEqual([]);
      await aliceIsIntact();
    });

    it("records a model call under the calling token's own run and session, whatever the call names", async () => {
      const out = await rpc(
        "ModelProxyService/ChatCompletion",
        { body: { messages: [{ role: "user", content: "hi" }] }, context: callContext(alice) },
        bearer(alice.otherToken),
      );
      expect(out.code, out.text).toBeUndefined();
      const calls = await createClient(ModelProxyService, transport()).listCalls(
        { runId: alice.tokenRunId },
        { headers: bearer(alice.key) },
      );
      expect(calls.calls.map((c) => c.callId)).toEqual([alice.callId]);
    });

    it("limits a token of Alice's other workflow to its own version's accessories and no records", async () => {
      const accessory = await rpc(
        "RegistryService/GetAccessory",
        { versionId: alice.versionId, key: "alice-acc" },
        bearer(alice.otherToken),
      );
      expect(refusedCodes, accessory.text).toContain(accessory.code);
      expect(accessory.text).not.toContain(alice.accessoryText);
      // Its own version's accessory lookup is allowed (and finds none here).
      const own = await rpc(
        "RegistryService/GetAccessory",
        { versionId: alice.otherVersionId, key: "alice-acc" },
        bearer(alice.otherToken),
      );
      expect(own.code).toBe(Code.NotFound);
      // Management RPCs are not for run tokens: a workflow cannot read another workflow's script, env or runs.
      for (const [name, request] of [
        ["RegistryService/ResolveWorkflow", { workflowRefName: alice.ref }],
        ["RegistryService/GetWorkflow", { workflowRefName: alice.ref }],
        ["RegistryService/ListWorkflows", {}],
        ["ExecutorService/GetRun", { runId: alice.runId }],
        ["ExecutorService/ListRuns", {}],
        ["ExecutorService/CancelRun", { runId: alice.runId }],
      ] as const) {
        const out = await rpc(name, request, bearer(alice.otherToken));
        expect(out.code, `${name}: ${out.text.slice(0, 300)}`).toBe(Code.PermissionDenied);
        expect(out.text).not.toContain(alice.envText);
        expect(out.text).not.toContain(alice.inputText);
      }
    });
  });

  describe("every REST route and RPC with another account's credentials", () => {
    const routes = createEdge({ clients: {} as Clients, maxBodyBytes: 1024 }).router.list();

    it("has an attack for every REST route and every RPC, and no stale ones", () => {
      const routeKeys = routes.map((r) => `${r.method} ${r.path}`);
      expect(
        routeKeys.filter((k) => !restAttacks[k]),
        "REST routes without an isolation attack",
      ).toEqual([]);
      expect(
        Object.keys(restAttacks).filter((k) => !routeKeys.includes(k)),
        "attacks on routes that no longer exist",
      ).toEqual([]);
      const rpcKeys = services.flatMap((s) => s.methods.map((m) => rpcName(s, m)));
      expect(
        rpcKeys.filter((k) => !rpcAttacks[k]),
        "RPCs without an isolation attack",
      ).toEqual([]);
      expect(
        Object.keys(rpcAttacks).filter((k) => !rpcKeys.includes(k)),
        "attacks on RPCs that no longer exist",
      ).toEqual([]);
    });

    it("answers every route and RPC without a valid credential (none, unknown, guessed, forged) with 401 / Unauthenticated", async () => {
      const wrong: string[] = [];
      const credentials: Record<string, Record<string, string>> = {
        none: {},
        "unknown key": bearer("sk-shaker-not-a-real-key"),
        "guessed service token": { "x-shaker-service-token": "guess", "x-shaker-account": alice.accountId },
        "Alice's run token with a later expiry": bearer(forge(alice.token, (c) => (c.exp = Date.now() + 86_400_000))),
        "another server's run token": bearer(otherServerToken),
        "the token of Alice's run that has ended": bearer(alice.endedToken),
      };
      for (const [how, credential] of Object.entries(credentials)) {
        for (const r of routes) {
          const attack = restAttacks[`${r.method} ${r.path}`](alice);
          const out = await rest(r.method, attack.path, credential, attack.body);
          if (out.status !== 401) wrong.push(`${r.method} ${attack.path} (${how}): ${out.status} ${out.text.slice(0, 200)}`);
          const leaked = leaks(alice, how, attack.path + stringify(attack.body), out);
          if (leaked.length) wrong.push(`${r.method} ${attack.path} (${how}) leaked ${leaked.join(", ")}`);
        }
        for (const [name, build] of Object.entries(rpcAttacks)) {
          for (const request of build(alice).requests) {
            const out = await rpc(name, request, credential);
            if (out.code !== Code.Unauthenticated)
              wrong.push(`${name} (${how}): ${out.code === undefined ? "answered" : Code[out.code]} ${out.text.slice(0, 200)}`);
            const leaked = leaks(alice, how, stringify(request), out);
            if (leaked.length) wrong.push(`${name} (${how}) leaked ${leaked.join(", ")}`);
          }
        }
      }
      expect(wrong).toEqual([]);
    });

    it("answers paths outside the routes without a credential and without falling over", async () => {
      // The console's static files: a malformed escape once threw out of the handler and killed the process.
      for (const path of ["/%E0%A4%A", "/..%2f..%2f..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/v1/%E0%A4%A"]) {
        const out = await rest("GET", path, {});
        expect(out.status, path).toBeLessThan(500);
        expect(out.text, path).not.toMatch(/root:.*:0:0:/);
      }
      expect((await rest("GET", "/healthz", {})).status).toBe(200);
    });

    for (const attacker of ["another account", "an admin account"] as const) {
      it(`refuses ${attacker} on every route and RPC aimed at Alice's resources, leaking nothing`, async () => {
        const key = attacker === "another account" ? malloryKey : server.apiKey;
        const wrong: string[] = [];
        for (const phase of phases) {
          for (const r of routes) {
            const attack = restAttacks[`${r.method} ${r.path}`](alice);
            if (attack.expect !== phase || (attack.adminMay && key === server.apiKey)) continue;
            const out = await rest(r.method, attack.path, bearer(key), attack.body);
            const ok = phase === "refused" ? refusedStatuses.includes(out.status!) : out.status! < 300;
            if (!ok) wrong.push(`${r.method} ${attack.path}: ${out.status} ${out.text.slice(0, 200)}`);
            const leaked = leaks(alice, key, attack.path + stringify(attack.body), out);
            if (leaked.length) wrong.push(`${r.method} ${attack.path} leaked ${leaked.join(", ")}: ${out.text.slice(0, 300)}`);
          }
          for (const [name, build] of Object.entries(rpcAttacks)) {
            const attack = build(alice);
            if (attack.expect !== phase || (attack.adminMay && key === server.apiKey)) continue;
            for (const request of attack.requests) {
              const out = await rpc(name, request, bearer(key));
              // A create may meet what the same caller's REST call just created under that name (its own).
              const ok =
                phase === "refused"
                  ? out.code !== undefined && refusedCodes.includes(out.code)
                  : out.code === undefined || (phase === "creates" && out.code === Code.AlreadyExists);
              if (!ok)
                wrong.push(
                  `${name} ${stringify(request).slice(0, 100)}: ${out.code === undefined ? "answered" : Code[out.code]} ${out.text.slice(0, 200)}`,
                );
              const leaked = leaks(alice, key, stringify(request), out);
              if (leaked.length)
                wrong.push(`${name} ${stringify(request).slice(0, 100)} leaked ${leaked.join(", ")}: ${out.text.slice(0, 300)}`);
            }
          }
        }
        expect(wrong).toEqual([]);
        await aliceIsIntact();
      });
    }
  });
});
