// An unexpected error inside a service (a database failure, a bug) reaches its caller as Internal
// "internal error", over the network as in process: drizzle's query errors print the query's
// parameters, which may be another caller's input or a script, and must stay in the operator's log.
import { createServer, type ServerHttp2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter, createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { ExecutorService } from "../gen/shaker/executor/v1/executor_pb.js";
import { createDirectTransport } from "../services/shared/direct-transport.js";
import { describeCause, hideInternalErrors } from "../services/shared/errors.js";

/** A database error as drizzle wraps it: its message carries the query and its parameters. */
function queryError(): Error {
  const e = new Error('Failed query: insert into "runs" values ($1)\nparams: the-secret-input', {
    cause: new Error("connection terminated"),
  });
  e.name = "DrizzleQueryError";
  return e;
}

const routes = (router: ConnectRouter) =>
  router.service(ExecutorService, {
    getRun() {
      throw queryError();
    },
    async *watchRun() {
      yield {};
      throw queryError();
    },
    cancelRun() {
      throw new ConnectError("no run run_x", Code.NotFound);
    },
  });

const server = createServer(connectNodeAdapter({ routes, interceptors: [hideInternalErrors] }));
const sessions = new Set<ServerHttp2Session>();
server.on("session", (s) => sessions.add(s));
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
afterAll(async () => {
  // The client keeps its HTTP/2 session open: end it, or close waits for it.
  for (const s of sessions) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

const clients = {
  network: createClient(ExecutorService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })),
  "in process": createClient(ExecutorService, createDirectTransport(routes)),
};

async function refusal(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error("not refused");
}

describe.each(Object.entries(clients))("an unexpected error, %s", (_, client) => {
  it("is Internal 'internal error', without the query's parameters", async () => {
    const unary = await refusal(client.getRun({ runId: "run_x" }));
    expect([unary.code, unary.rawMessage]).toEqual([Code.Internal, "internal error"]);
    const stream = await refusal(
      (async () => {
        for await (const _ of client.watchRun({ runId: "run_x" })) {
          // the first message comes; the error follows it
        }
      })(),
    );
    expect([stream.code, stream.rawMessage]).toEqual([Code.Internal, "internal error"]);
  });

  it("leaves a service's own errors as they are", async () => {
    const e = await refusal(client.cancelRun({ runId: "run_x" }));
    expect([e.code, e.rawMessage]).toEqual([Code.NotFound, "no run run_x"]);
  });
});

it("logs a database error's own message, not drizzle's with the parameters", () => {
  expect(describeCause(queryError())).toBe("database: connection terminated");
});
