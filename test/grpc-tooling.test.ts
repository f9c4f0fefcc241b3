// gRPC tooling against a real server: server reflection (v1 and v1alpha) as grpcurl, `buf curl`,
// Postman and Kreya use it, UNIMPLEMENTED for an unknown method, and error messages that reach a
// grpc-js client exactly. The clients are the real ones: @grpc/grpc-js with @grpc/proto-loader, and
// the `buf` binary of the @bufbuild/buf devDependency.
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { createExecutorClient } from "shaker/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeGrpcMessage } from "../services/shared/grpc-compat.js";
import { startTestServer, type TestServer } from "./helpers.js";

const run = promisify(execFile);
const buf = join("node_modules", ".bin", "buf");
const shakerServices = [
  "shaker.cluster.v1.ClusterService",
  "shaker.datastore.v1.DatastoreService",
  "shaker.executor.v1.ExecutorService",
  "shaker.modelproxy.v1.ModelProxyService",
  "shaker.registry.v1.RegistryService",
];
const reflectionServices = ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];
// Every character a URI reserves, '%', non-ASCII and a newline: what encodeURIComponent + decodeURI mangle.
const workflowMessage = "boom: 100% ✓ (a/b?c=d&e+f,g;h@i$j#k) 'quoted' ünïcødé\nsecond line";

let server: TestServer;
let target: string;
let packages: grpc.GrpcObject;

const loadOptions = { includeDirs: ["proto"], keepCase: false, longs: String, enums: String, defaults: true, oneofs: true };

beforeAll(async () => {
  server = await startTestServer();
  target = new URL(server.url).host;
  const definition = protoLoader.loadSync(
    [
      "shaker/registry/v1/registry.proto",
      "shaker/executor/v1/executor.proto",
      "grpc/reflection/v1/reflection.proto",
      "grpc/reflection/v1alpha/reflection.proto",
    ],
    loadOptions,
  );
  packages = grpc.loadPackageDefinition(definition);
  await server.upload("raises", `def execute(ctx):\n    raise ValueError(${JSON.stringify(workflowMessage)})\n    return 1\n`);
});

afterAll(async () => {
  await server?.close();
});

/** lookup finds a loaded service constructor by its full name. */
function lookup(name: string): grpc.ServiceClientConstructor {
  let at: unknown = packages;
  for (const part of name.split(".")) at = (at as Record<string, unknown>)[part];
  return at as grpc.ServiceClientConstructor;
}

function keyed(apiKey = server.apiKey): grpc.Metadata {
  const md = new grpc.Metadata();
  if (apiKey) md.set("authorization", `Bearer ${apiKey}`);
  return md;
}

/** reflect sends reflection requests on one ServerReflectionInfo stream and collects the responses. */
async function reflect(requests: Record<string, unknown>[], version: "v1" | "v1alpha" = "v1", md = keyed()): Promise<any[]> {
  const Client = lookup(`grpc.reflection.${version}.ServerReflection`);
  const client = new Client(target, grpc.credentials.createInsecure());
  try {
    return await new Promise<any[]>((resolve, reject) => {
      const call = client.ServerReflectionInfo(md);
      const out: any[] = [];
      call.on("data", (r: unknown) => out.push(r));
      call.on("error", reject);
      call.on("end", () => resolve(out));
      for (const r of requests) call.write(r);
      call.end();
    });
  } finally {
    client.close();
  }
}

function fileNames(response: any): string[] {
  return response.fileDescriptorResponse.fileDescriptorProto.map((b: Uint8Array) => fromBinary(FileDescriptorProtoSchema, b).name);
}

describe("server reflection, with grpc-js", () => {
  for (const version of ["v1", "v1alpha"] as const) {
    it(`lists the Shaker services and the reflection services (${version})`, async () => {
      const [r] = await reflect([{ host: "h", listServices: "" }], version);
      expect(r.validHost).toBe("h");
      expect(r.originalRequest.listServices).toBe("");
      expect(r.listServicesResponse.service.map((s: { name: string }) => s.name).sort()).toEqual(
        [...reflectionServices, ...shakerServices].sort(),
      );
    });
  }

  it("file_containing_symbol answers the file and every file it depends on", async () => {
    const [service, method, nested, wkt] = await reflect([
      { fileContainingSymbol: "shaker.registry.v1.RegistryService" },
      { fileContainingSymbol: "shaker.executor.v1.ExecutorService.Run" },
      { fileContainingSymbol: "shaker.executor.v1.Invocation.secrets" },
      { fileContainingSymbol: "google.protobuf.Struct" },
    ]);
    expect(fileNames(service)[0]).toBe("shaker/registry/v1/registry.proto");
    expect(fileNames(service)).toEqual(expect.arrayContaining(["google/protobuf/struct.proto", "google/protobuf/timestamp.proto"]));
    expect(fileNames(method)[0]).toBe("shaker/executor/v1/executor.proto");
    expect(fileNames(method)).toContain("google/protobuf/struct.proto");
    expect(fileNames(nested)[0]).toBe("shaker/executor/v1/executor.proto");
    expect(fileNames(wkt)).toEqual(["google/protobuf/struct.proto"]);
    // The descriptors are whole: the service with its methods, as a client builds its schema from.
    const registry = fromBinary(FileDescriptorProtoSchema, service.fileDescriptorResponse.fileDescriptorProto[0]);
    expect(registry.package).toBe("shaker.registry.v1");
    expect(registry.service[0].method.map((m) => m.name)).toContain("ListWorkflows");
    expect(registry.dependency).toContain("google/protobuf/struct.proto");
  });

  it("file_by_filename, the reflection services' own files, and errors for what does not exist", async () => {
    const [byName, own, missingSymbol, missingFile, extensions] = await reflect([
      { fileByFilename: "google/protobuf/timestamp.proto" },
      { fileContainingSymbol: "grpc.reflection.v1.ServerReflection" },
      { fileContainingSymbol: "shaker.nope.v1.Nothing" },
      { fileByFilename: "nope.proto" },
      { allExtensionNumbersOfType: "shaker.registry.v1.Workflow" },
    ]);
    expect(fileNames(byName)).toEqual(["google/protobuf/timestamp.proto"]);
    expect(fileNames(own)).toEqual(["grpc/reflection/v1/reflection.proto"]);
    expect(missingSymbol.errorResponse.errorCode).toBe(grpc.status.NOT_FOUND);
    expect(missingSymbol.errorResponse.errorMessage).toContain("shaker.nope.v1.Nothing");
    expect(missingFile.errorResponse.errorCode).toBe(grpc.status.NOT_FOUND);
    expect(extensions.allExtensionNumbersResponse).toEqual({ baseTypeName: "shaker.registry.v1.Workflow", extensionNumber: [] });
  });

  it("needs an API key, as every RPC on the port does, and grpc-js reads the refusal", async () => {
    for (const apiKey of ["", "sk-not-a-key"]) {
      const err = await reflect([{ listServices: "" }], "v1", keyed(apiKey)).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(err?.code, `key ${JSON.stringify(apiKey)}`).toBe(grpc.status.UNAUTHENTICATED);
      expect(err?.details).toMatch(/key/i);
    }
  });
});

describe("buf curl, with the schema from reflection", () => {
  const auth = () => [`--header=Authorization: Bearer ${server.apiKey}`, `--reflect-header=Authorization: Bearer ${server.apiKey}`];

  it("lists the services", async () => {
    const { stdout } = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...auth(), "--list-services", server.url]);
    expect(stdout.trim().split("\n").sort()).toEqual([...reflectionServices, ...shakerServices].sort());
  });

  it("lists a service's methods over v1alpha too", async () => {
    const { stdout } = await run(buf, [
      "curl",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "--reflect-protocol",
      "grpc-v1alpha",
      ...auth(),
      "--list-methods",
      server.url,
    ]);
    expect(stdout).toContain("shaker.registry.v1.RegistryService/ListWorkflows");
  });

  it("calls a Registry RPC over gRPC without --schema", async () => {
    const { stdout } = await run(buf, [
      "curl",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      // As docs/api.md shows it: '*' sends the --header headers with the reflection requests too.
      `--header=Authorization: Bearer ${server.apiKey}`,
      "--reflect-header=*",
      "--data",
      '{"workflowRefName": "raises"}',
      `${server.url}/shaker.registry.v1.RegistryService/GetWorkflow`,
    ]);
    expect(JSON.parse(stdout).workflow.workflowRefName).toBe("raises");
  });
});

describe("gRPC status and messages, with grpc-js", () => {
  it("an unknown method gets UNIMPLEMENTED, not an HTTP 404", async () => {
    const client = new grpc.Client(target, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError>((resolve) => {
        client.makeUnaryRequest(
          "/made.up.v1.NopeService/Nope",
          (x: Buffer) => x,
          (x: Buffer) => x,
          Buffer.alloc(0),
          keyed(),
          (e) => resolve(e as grpc.ServiceError),
        );
      });
      expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
      expect(err.details).toBe("unknown method /made.up.v1.NopeService/Nope: this server does not serve it");
      // An unknown method of a known service too (Connect answers that one itself).
      const Registry = lookup("shaker.registry.v1.RegistryService");
      const known = new Registry(target, grpc.credentials.createInsecure());
      const err2 = await new Promise<grpc.ServiceError>((resolve) => {
        known.makeUnaryRequest(
          "/shaker.registry.v1.RegistryService/NoSuchMethod",
          (x: Buffer) => x,
          (x: Buffer) => x,
          Buffer.alloc(0),
          keyed(),
          (e) => resolve(e as grpc.ServiceError),
        );
      });
      expect(err2.code).toBe(grpc.status.UNIMPLEMENTED);
      known.close();
    } finally {
      client.close();
    }
    // Anything else on an unknown path is still the REST 404.
    const res = await server.request("GET", "/made.up.v1.NopeService/Nope");
    expect(res.status).toBe(404);
    expect(res.body.error.code).toBe("not_found");
  });

  it("a workflow's error message reaches a grpc-js client exactly", async () => {
    const Executor = lookup("shaker.executor.v1.ExecutorService");
    const client = new Executor(target, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError>((resolve, reject) => {
        client.Run(
          { invocation: { workflowRefName: "raises", hasInput: true, input: { stringValue: "x" } } },
          keyed(),
          (e: grpc.ServiceError | null) => (e ? resolve(e) : reject(new Error("the run succeeded"))),
        );
      });
      expect(err.code).toBe(grpc.status.UNKNOWN);
      expect(err.details).toBe(`ValueError: ${workflowMessage}`);
    } finally {
      client.close();
    }
  });

  it("Connect-ES clients read the same message over gRPC, gRPC-Web and Connect", async () => {
    for (const protocol of ["grpc", "grpc-web", "connect"] as const) {
      const client = createExecutorClient({ baseUrl: server.url, apiKey: server.apiKey, protocol });
      const err = await client
        .run({ invocation: { workflowRefName: "raises", hasInput: true, input: { kind: { case: "stringValue", value: "x" } } } })
        .catch((e: unknown) => ConnectError.from(e));
      expect((err as ConnectError).code, protocol).toBe(Code.Unknown);
      expect((err as ConnectError).rawMessage, protocol).toBe(`ValueError: ${workflowMessage}`);
    }
  });

  it("encodeGrpcMessage escapes only '%' and bytes outside printable ASCII, as the gRPC spec says", () => {
    expect(encodeGrpcMessage("a: b/c?d#e")).toBe("a: b/c?d#e");
    expect(encodeGrpcMessage("100% ✓\n")).toBe("100%25 %E2%9C%93%0A");
    expect(encodeGrpcMessage("\x7f\x00")).toBe("%7F%00");
    // A lone surrogate is not UTF-8: it goes as U+FFFD, which decodes.
    expect(decodeURI(encodeGrpcMessage("x\ud800y"))).toBe("x\ufffdy");
  });
});

// grpcio (Python) decodes any %XX, so the spec's encoding reads right there too; it is not
// installed on this machine, so no Python client runs here.
