// The typed clients a TypeScript program imports as `shaker/client`, against a real server.
import { Code, ConnectError } from "@connectrpc/connect";
import { createRegistryClient, createShakerClients, RegistryService, registry } from "shaker/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers.js";

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
});

afterAll(async () => {
  await server?.close();
});

describe("shaker/client", () => {
  it("exports the generated descriptors and message types", () => {
    expect(RegistryService.typeName).toBe("shaker.registry.v1.RegistryService");
    expect(registry.ExecutionMode.STREAM).toBeGreaterThan(0);
  });

  for (const protocol of ["connect", "grpc", "grpc-web"] as const) {
    it(`calls Registry RPCs over ${protocol} with the API key`, async () => {
      const client = createRegistryClient({ baseUrl: server.url, apiKey: server.apiKey, protocol });
      const ref = `typed-${protocol}`;
      const up = await client.uploadWorkflow({ workflowRefName: ref, script: "def execute(ctx):\n    return {'via': 'rpc'}\n" });
      expect(up.version).toBe("1.0.0");
      const got = await client.getWorkflow({ workflowRefName: ref });
      expect(got.workflow?.workflowRefName).toBe(ref);
      const listed = await client.listWorkflows({});
      expect(listed.workflows.map((w) => w.workflowRefName)).toContain(ref);
      // The REST edge sees what the RPC stored.
      const invoked = await server.invoke({ model: `workflow:${ref}`, input: {} });
      expect(invoked.body.output).toEqual({ via: "rpc" });
    });
  }

  it("a validation failure comes back as a typed ConnectError", async () => {
    const { registry: client } = createShakerClients({ baseUrl: server.url, apiKey: server.apiKey });
    const v = await client.validateWorkflow({ code: "def execute(ctx):\n    return\n" });
    expect(v.ok).toBe(false);
    expect(v.errors[0]?.line).toBe(2);
    const err = await client.uploadWorkflow({ workflowRefName: "bad", script: "x = 1\n" }).catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
  });

  it("without a key, or with a wrong one, calls are Unauthenticated", async () => {
    for (const apiKey of ["", "sk-not-a-key"]) {
      const client = createRegistryClient({ baseUrl: server.url, apiKey });
      const err = await client.listWorkflows({}).catch((e: unknown) => ConnectError.from(e));
      expect((err as ConnectError).code).toBe(Code.Unauthenticated);
    }
  });
});
