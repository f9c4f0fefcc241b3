// The cluster's membership in process: the ClusterService over a Registry store of its own (in
// memory, or an empty PostgreSQL database), and the executor router's choices over a fixed list of
// nodes, each "executor" a router transport that says who answered.
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createContextValues, createRouterTransport, type Transport } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import { ClusterService, type Node, NodeSchema } from "../gen/shaker/cluster/v1/cluster_pb.js";
import { ExecutorService, RunSchema } from "../gen/shaker/executor/v1/executor_pb.js";
import { createClusterService } from "../services/registry/cluster.js";
import { createRegistryStore } from "../services/registry/store.js";
import { createAuth, headers } from "../services/shared/auth.js";
import { executorRouter, ownerKey } from "../services/shared/executor-router.js";
import { testStoreLocation } from "./databases.js";

const serviceSecret = "cluster-test-secret";
const database = await testStoreLocation();
const store = await createRegistryStore(database.location);
const auth = createAuth({
  serviceSecret,
  authenticateKey: async (key) =>
    key === "admin-key"
      ? { accountId: "a", admin: true, keyId: "k1" }
      : key === "user-key"
        ? { accountId: "b", admin: false, keyId: "k2" }
        : undefined,
});
const cluster = createClusterService({ store: store.cluster, auth, deadAfterMs: 1000 });
const client = createClient(ClusterService, createRouterTransport(cluster.routes));
const asService = { headers: { [headers.serviceToken]: serviceSecret } };

afterAll(async () => {
  await store.close();
  await database.release();
});

// Every node started at the same time: they are listed by id.
const startedAt = Date.now();
const node = (id: string, extra: { services?: string[]; url?: string; capacity?: number; runsInFlight?: number } = {}) =>
  create(NodeSchema, {
    id,
    services: ["executor"],
    url: `http://${id}:8080`,
    capacity: 10,
    startedAt: timestampFromMs(startedAt),
    ...extra,
  });

async function refusal(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error("the call was not refused");
}

describe("ClusterService", () => {
  it("records heartbeats and answers every node, live until silent for deadAfter", async () => {
    const first = await client.heartbeat({ node: node("exec-a", { runsInFlight: 3 }) }, asService);
    expect(first.deadAfterSeconds).toBe(1);
    expect(first.nodes.map((n) => [n.id, n.live, n.runsInFlight])).toEqual([["exec-a", true, 3]]);
    await client.heartbeat({ node: node("edge-b", { services: ["edge"], url: "", capacity: 0 }) }, asService);
    // A second beat updates the row, never adds one.
    await client.heartbeat({ node: node("exec-a", { runsInFlight: 5 }) }, asService);
    const listed = await client.listNodes({}, { headers: { authorization: "Bearer admin-key" } });
    expect(listed.nodes.map((n) => [n.id, n.runsInFlight])).toEqual([
      ["edge-b", 0],
      ["exec-a", 5],
    ]);
    await new Promise((r) => setTimeout(r, 1100));
    await client.heartbeat({ node: node("edge-b", { services: ["edge"], url: "", capacity: 0 }) }, asService);
    const later = await client.listNodes({}, asService);
    expect(later.nodes.map((n) => [n.id, n.live])).toEqual([
      ["edge-b", true],
      ["exec-a", false],
    ]);
    await client.leave({ id: "exec-a" }, asService);
    expect((await client.listNodes({}, asService)).nodes.map((n) => n.id)).toEqual(["edge-b"]);
  });

  it("takes heartbeats from the services only, and lists nodes to admins", async () => {
    expect((await refusal(client.heartbeat({ node: node("x") }, { headers: { authorization: "Bearer admin-key" } }))).code).toBe(
      Code.PermissionDenied,
    );
    expect((await refusal(client.listNodes({}, { headers: { authorization: "Bearer user-key" } }))).code).toBe(Code.PermissionDenied);
    expect((await refusal(client.listNodes({}, {}))).code).toBe(Code.Unauthenticated);
  });

  it("names the field of a bad heartbeat", async () => {
    const bad = await refusal(client.heartbeat({ node: node("") }, asService));
    expect([bad.code, bad.rawMessage]).toEqual([Code.InvalidArgument, "'node.id' is required"]);
    const services = await refusal(client.heartbeat({ node: node("x", { services: ["executor", "mainframe"] }) }, asService));
    expect(services.rawMessage).toContain("'node.services' has unknown services: mainframe");
    const url = await refusal(client.heartbeat({ node: node("x", { url: "file:///etc" }) }, asService));
    expect(url.rawMessage).toContain("'node.url'");
  });
});

describe("executorRouter", () => {
  /** An executor that answers which node it is, in GetRun's run record. */
  const executor = (id: string, owns: Record<string, string> = {}): Transport =>
    createRouterTransport((router) =>
      router.service(ExecutorService, {
        startRun: () => ({ started: { runId: id } }),
        getRun: (req) => ({ run: create(RunSchema, { runId: req.runId, executor: owns[req.runId] ?? id }) }),
        cancelRun: () => ({ cancelled: id === "exec-2" }),
        checkRun: () => ({ live: id === "exec-2" }),
      }),
    );
  const live = (id: string, runsInFlight: number, capacity = 10) =>
    create(NodeSchema, { id, services: ["executor"], url: id, capacity, runsInFlight, live: true, lastHeartbeat: timestampFromMs(1000) });
  const owns = { "run-on-2": "exec-2" };
  const transports: Record<string, Transport> = {
    "exec-1": executor("exec-1", owns),
    "exec-2": executor("exec-2", owns),
    "exec-3": executor("exec-3", owns),
  };

  it("starts runs on the least loaded live executor, counting what it sent since the heartbeat", async () => {
    const nodes = [live("exec-1", 4), live("exec-2", 2), create(NodeSchema, { ...live("exec-3", 0), live: false })];
    const router = createClient(
      ExecutorService,
      executorRouter({ nodes: () => nodes, transportFor: (n) => transports[n.id]!, fallback: undefined }),
    );
    const chosen: string[] = [];
    for (let i = 0; i < 6; i++) chosen.push((await router.startRun({})).started?.runId ?? "");
    // exec-2 had 2 in flight against exec-1's 4: it gets the first two, then they alternate. exec-3 is dead.
    expect(chosen).toEqual(["exec-2", "exec-2", "exec-1", "exec-2", "exec-1", "exec-2"]);
  });

  it("refuses a start at once when every live executor runs its capacity of this process's runs, until one ends", async () => {
    // Executors whose runs last until released, counting the starts they get.
    const calls: Record<string, number> = {};
    const holds: (() => void)[] = [];
    let endStream = () => {};
    const streamEnds = new Promise<void>((r) => {
      endStream = r;
    });
    const holding = (id: string): Transport =>
      createRouterTransport((router) =>
        router.service(ExecutorService, {
          startRun: async () => {
            calls[id] = (calls[id] ?? 0) + 1;
            await new Promise<void>((r) => holds.push(r));
            return { started: { runId: id } };
          },
          async *runStream() {
            calls[id] = (calls[id] ?? 0) + 1;
            yield { event: { case: "started", value: { runId: id } } };
            await streamEnds;
          },
        }),
      );
    const held = { "exec-1": holding("exec-1"), "exec-2": holding("exec-2") } as Record<string, Transport>;
    const nodes = [live("exec-1", 0, 2), live("exec-2", 0, 1)];
    const router = createClient(
      ExecutorService,
      executorRouter({ nodes: () => nodes, transportFor: (n) => held[n.id]!, fallback: undefined }),
    );
    // Two unary starts and a stream fill both executors.
    const first = [router.startRun({}), router.startRun({})];
    const stream = router.runStream({})[Symbol.asyncIterator]();
    expect((await stream.next()).value?.event.value.runId).toBeDefined();
    await new Promise((r) => setTimeout(r, 10));
    expect(calls).toEqual({ "exec-1": 2, "exec-2": 1 });
    const refused = await refusal(router.startRun({}));
    expect([refused.code, refused.rawMessage]).toEqual([
      Code.ResourceExhausted,
      "every executor of this Shaker runs as many runs as it may (2, 1); try again shortly",
    ]);
    expect(calls).toEqual({ "exec-1": 2, "exec-2": 1 }); // no executor was asked
    // The stream's run ends: its place is free again.
    endStream();
    expect((await stream.next()).done).toBe(true);
    const next = router.startRun({});
    await new Promise((r) => setTimeout(r, 10));
    expect(calls).toEqual({ "exec-1": 3, "exec-2": 1 });
    for (const release of holds.splice(0)) release();
    expect((await Promise.all([...first, next])).map((r) => r.started?.runId)).toEqual(["exec-1", "exec-2", "exec-1"]);
    // A later heartbeat that counts fewer runs than this process thinks it has there (an end it
    // missed) is believed: the count is never more than the executor's own load plus what was sent since.
    const slow = [router.startRun({}), router.startRun({}), router.startRun({})];
    await new Promise((r) => setTimeout(r, 10));
    expect((await refusal(router.startRun({}))).code).toBe(Code.ResourceExhausted);
    nodes[1] = create(NodeSchema, { ...live("exec-2", 0, 1), lastHeartbeat: timestampFromMs(2000) });
    const after = router.startRun({});
    await new Promise((r) => setTimeout(r, 10));
    expect(calls["exec-2"]).toBe(3);
    for (const release of holds.splice(0)) release();
    await Promise.all([...slow, after]);
    // A caller that goes away (its signal aborts) frees its run's place too.
    const one = [live("exec-1", 0, 1)];
    const single = createClient(
      ExecutorService,
      executorRouter({ nodes: () => one, transportFor: (n) => held[n.id]!, fallback: undefined }),
    );
    const gone = new AbortController();
    const leaving = single.runStream({}, { signal: gone.signal })[Symbol.asyncIterator]();
    await leaving.next();
    expect((await refusal(single.startRun({}))).code).toBe(Code.ResourceExhausted);
    gone.abort();
    await leaving.next().catch(() => undefined);
    const stays = single.startRun({});
    await new Promise((r) => setTimeout(r, 10));
    for (const release of holds.splice(0)) release();
    expect((await stays).started?.runId).toBe("exec-1");
  });

  it("weighs load by capacity", async () => {
    const nodes = [live("exec-1", 10, 100), live("exec-2", 5, 10)];
    const router = createClient(
      ExecutorService,
      executorRouter({ nodes: () => nodes, transportFor: (n) => transports[n.id]!, fallback: undefined }),
    );
    expect((await router.startRun({})).started?.runId).toBe("exec-1");
  });

  it("sends a call about a run to the executor running it", async () => {
    const nodes = [live("exec-1", 0), live("exec-2", 9)];
    const router = createClient(
      ExecutorService,
      executorRouter({ nodes: () => nodes, transportFor: (n) => transports[n.id]!, fallback: undefined }),
    );
    // Found from the run's record…
    expect((await router.cancelRun({ runId: "run-on-2" })).cancelled).toBe(true);
    // …or named by the caller.
    const named = { contextValues: createContextValues().set(ownerKey, "exec-2") };
    expect((await router.checkRun({ runId: "run-x" }, named)).live).toBe(true);
    // Reading records goes anywhere.
    expect((await router.getRun({ runId: "run-x" })).run?.executor).toBe("exec-1");
  });

  it("starts runs on this process's own executor, and sends calls about others' runs to them", async () => {
    const nodes = [live("exec-1", 50), live("exec-2", 0)];
    const router = createClient(
      ExecutorService,
      executorRouter({
        nodes: () => nodes,
        transportFor: (n) => transports[n.id]!,
        local: { id: () => "exec-1", transport: transports["exec-1"]! },
        fallback: undefined,
      }),
    );
    expect((await router.startRun({})).started?.runId).toBe("exec-1");
    expect((await router.cancelRun({ runId: "run-on-2" })).cancelled).toBe(true);
  });

  it("passes over an executor it could not reach until it heartbeats again", async () => {
    let beat = 1000;
    const down = createRouterTransport((router) =>
      router.service(ExecutorService, {
        startRun() {
          throw new ConnectError("connect ECONNREFUSED", Code.Unavailable);
        },
      }),
    );
    const nodes = () => [live("exec-1", 5), create(NodeSchema, { ...live("exec-2", 0), lastHeartbeat: timestampFromMs(beat) })];
    const router = createClient(
      ExecutorService,
      executorRouter({ nodes, transportFor: (n) => (n.id === "exec-2" ? down : transports[n.id]!), fallback: undefined }),
    );
    expect((await refusal(router.startRun({}))).code).toBe(Code.Unavailable);
    expect((await router.startRun({})).started?.runId).toBe("exec-1");
    beat = Date.now() + 1;
    expect((await refusal(router.startRun({}))).code).toBe(Code.Unavailable);
  });

  it("falls back on SHAKER_EXECUTOR_URL or this process's executor while none is listed, and refuses without one", async () => {
    const empty = { nodes: () => [], transportFor: (n: Node) => transports[n.id]! };
    const withFallback = createClient(ExecutorService, executorRouter({ ...empty, fallback: transports["exec-3"] }));
    expect((await withFallback.startRun({})).started?.runId).toBe("exec-3");
    const withLocal = createClient(
      ExecutorService,
      executorRouter({ ...empty, local: { id: () => "exec-1", transport: transports["exec-1"]! }, fallback: undefined }),
    );
    expect((await withLocal.startRun({})).started?.runId).toBe("exec-1");
    const without = createClient(ExecutorService, executorRouter({ ...empty, fallback: undefined }));
    const refused = await refusal(without.startRun({}));
    expect([refused.code, refused.rawMessage]).toEqual([Code.Unavailable, expect.stringContaining("no executor is live")]);
  });
});
