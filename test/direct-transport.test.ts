import { Code, ConnectError, createClient, type HandlerContext } from "@connectrpc/connect";
import { describe, expect, it, vi } from "vitest";
import { DatastoreService } from "../gen/shaker/datastore/v1/datastore_pb.js";
import { ExecutorService } from "../gen/shaker/executor/v1/executor_pb.js";
import { RegistryService } from "../gen/shaker/registry/v1/registry_pb.js";
import { createDirectTransport } from "../services/shared/direct-transport.js";

// The in-process transport gives handlers the HandlerContext a Connect server would: the caller's
// headers, a signal that aborts when the caller does, when the deadline passes and when the call is
// over, and errors with their codes.
describe("direct transport", () => {
  const seen: { ctx?: HandlerContext; signal?: AbortSignal; abortedInside?: boolean } = {};
  const tick = () => new Promise((r) => setImmediate(r));
  const failure = (call: Promise<unknown>) =>
    call.then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
  const registry = {
    async resolveWorkflow(req: { workflowRefName: string }, ctx: HandlerContext) {
      seen.ctx = ctx;
      if (req.workflowRefName === "missing") throw new ConnectError("workflow 'missing' not found", Code.NotFound);
      if (req.workflowRefName === "wait") {
        seen.signal = ctx.signal;
        if (!ctx.signal.aborted) await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
        throw ConnectError.from(ctx.signal.reason);
      }
      ctx.responseHeader.set("x-served-by", "registry");
      return { version: { workflowRefName: req.workflowRefName, script: ctx.requestHeader.get("x-account") ?? "" } };
    },
  };
  const executor = {
    async *runStream(_req: unknown, ctx: HandlerContext) {
      seen.signal = ctx.signal;
      try {
        for (let i = 0; ; i++) yield { event: { case: "started", value: { runId: `r${i}` } } };
      } finally {
        seen.abortedInside = ctx.signal.aborted;
      }
    },
  };
  const transport = createDirectTransport((router) => {
    router.service(RegistryService, registry as never);
    router.service(ExecutorService, executor as never);
  });
  const registryClient = createClient(RegistryService, transport);
  const executorClient = createClient(ExecutorService, transport);

  it("passes the caller's headers in and the handler's response headers out, and ends the handler's signal with the call", async () => {
    let header: Headers | undefined;
    const res = await registryClient.resolveWorkflow(
      { workflowRefName: "wf" },
      { headers: { "x-account": "acct_1" }, onHeader: (h) => (header = h) },
    );
    expect(res.version).toMatchObject({ workflowRefName: "wf", script: "acct_1" });
    expect(header?.get("x-served-by")).toBe("registry");
    expect(seen.ctx!.signal.aborted).toBe(true);
    expect(ConnectError.from(seen.ctx!.signal.reason).code).toBe(Code.Canceled);
  });

  it("keeps an error's code", async () => {
    const err = await failure(registryClient.resolveWorkflow({ workflowRefName: "missing" }));
    expect(err?.code).toBe(Code.NotFound);
    expect(err?.rawMessage).toBe("workflow 'missing' not found");
  });

  it("aborts the handler's signal when the caller aborts, and when the deadline passes", async () => {
    const caller = new AbortController();
    const call = failure(registryClient.resolveWorkflow({ workflowRefName: "wait" }, { signal: caller.signal }));
    await new Promise((r) => setTimeout(r, 20));
    expect(seen.signal!.aborted).toBe(false);
    caller.abort(new ConnectError("the caller went away", Code.Canceled));
    expect((await call)?.code).toBe(Code.Canceled);

    const timed = await failure(registryClient.resolveWorkflow({ workflowRefName: "wait" }, { timeoutMs: 30 }));
    expect(timed?.code).toBe(Code.DeadlineExceeded);

    const already = new AbortController();
    already.abort(new ConnectError("gone before the call", Code.Canceled));
    const early = await failure(registryClient.resolveWorkflow({ workflowRefName: "wait" }, { signal: already.signal }));
    expect(early?.code).toBe(Code.Canceled);
  });

  it("ends a stream's handler, its signal aborted, when the consumer stops and aborts (Connect clients never return() a stream)", async () => {
    const ids: string[] = [];
    const consumer = new AbortController();
    for await (const message of executorClient.runStream({}, { signal: consumer.signal })) {
      ids.push((message.event.value as { runId: string }).runId);
      if (ids.length === 3) break;
    }
    expect(ids).toEqual(["r0", "r1", "r2"]);
    await tick();
    expect(seen.abortedInside).toBeUndefined(); // still suspended at its yield
    consumer.abort(new ConnectError("the consumer went away", Code.Canceled));
    await tick();
    expect(seen.signal!.aborted).toBe(true);
  });
  it("gives a client stream's caller the error of its own request stream, without logging it as the service's", async () => {
    const stderr = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    try {
      const datastore = createDirectTransport((router) =>
        router.service(DatastoreService, {
          async upsertRecordsStream(requests: AsyncIterable<{ store: string }>) {
            let n = 0;
            for await (const part of requests) if (part.store === "boom") throw new Error("the service broke");
            n++;
            return { upserted: n };
          },
        } as never),
      );
      const client = createClient(DatastoreService, datastore);
      async function* refused() {
        yield { store: "s" };
        throw new Error("records[1]: missing id");
      }
      const own = await failure(client.upsertRecordsStream(refused()));
      expect(own?.rawMessage).toBe("records[1]: missing id");
      expect(stderr.mock.calls.map(([text]) => String(text)).join("")).not.toContain("internal error");
      // The service's own failure is still its internal error, logged and not sent.
      async function* fine() {
        yield { store: "boom" };
      }
      const broke = await failure(client.upsertRecordsStream(fine()));
      expect([broke?.code, broke?.rawMessage]).toEqual([Code.Internal, "internal error"]);
      expect(stderr.mock.calls.map(([text]) => String(text)).join("")).toContain("internal error: the service broke");
    } finally {
      stderr.mockRestore();
    }
  });
});
