import { create, type DescExtension, type DescFile, type DescMessage, type DescService, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/**
 * The gRPC server reflection protocol (grpc.reflection.v1 and its older name v1alpha), which
 * grpcurl, `buf curl`, Postman, Kreya and IDE plugins use to find out what a server serves without
 * being handed its .proto files. It answers from the descriptors protobuf-es generated code already
 * embeds (each service's GenFile and the files it imports), so nothing is read from disk.
 */

/** ReflectionOptions of withReflection. */
export interface ReflectionOptions {
  /**
   * authenticate checks the caller's headers before any answer and rejects (with the ConnectError
   * the caller then gets) when they are not good. Without it reflection answers anyone.
   */
  authenticate?: (headers: Headers) => Promise<unknown>;
}

/** Request is a reflection request of either version: the two are the same message. */
type Request = v1.ServerReflectionRequest | v1alpha.ServerReflectionRequest;
/** Answer is a reflection response's message_response, alike in both versions. */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/**
 * Index knows the services served and, for every file they need, the symbols it declares: each
 * message, field, oneof, enum, enum value, extension, service and method, by its full name.
 */
class Index {
  readonly services: string[];
  private readonly files = new Map<string, DescFile>();
  private readonly symbols = new Map<string, DescFile>();
  private readonly extensions: DescExtension[] = [];
  private readonly encoded = new Map<DescFile, Uint8Array>();

  constructor(services: DescService[]) {
    this.services = [...new Set(services.map((s) => s.typeName))].sort();
    for (const s of services) this.addFile(s.file);
  }

  private addFile(file: DescFile): void {
    // file.name lacks the ".proto" suffix; reflection names files as imports do.
    if (this.files.has(file.proto.name)) return;
    this.files.set(file.proto.name, file);
    for (const dep of file.dependencies) this.addFile(dep);
    const symbol = (name: string) => {
      if (!this.symbols.has(name)) this.symbols.set(name, file);
    };
    const addExtension = (ext: DescExtension) => {
      symbol(ext.typeName);
      this.extensions.push(ext);
    };
    const addMessage = (m: DescMessage) => {
      symbol(m.typeName);
      for (const f of m.fields) symbol(`${m.typeName}.${f.name}`);
      for (const o of m.oneofs) symbol(`${m.typeName}.${o.name}`);
      for (const n of m.nestedMessages) addMessage(n);
      for (const e of m.nestedEnums) addEnum(e, m.typeName);
      for (const x of m.nestedExtensions) addExtension(x);
    };
    const addEnum = (e: DescFile["enums"][number], scope: string) => {
      symbol(e.typeName);
      for (const v of e.values) {
        // Enum values are scoped as the enum's siblings; the enum-qualified name is accepted too.
        symbol(scope ? `${scope}.${v.name}` : v.name);
        symbol(`${e.typeName}.${v.name}`);
      }
    };
    for (const m of file.messages) addMessage(m);
    for (const e of file.enums) addEnum(e, file.proto.package);
    for (const x of file.extensions) addExtension(x);
    for (const s of file.services) {
      symbol(s.typeName);
      for (const m of s.methods) symbol(`${s.typeName}.${m.name}`);
    }
  }

  /** withDependencies is `file` first, then every file it imports, directly or not, each once. */
  private withDependencies(file: DescFile): Uint8Array[] {
    const seen = new Set<DescFile>();
    const out: Uint8Array[] = [];
    const visit = (f: DescFile) => {
      if (seen.has(f)) return;
      seen.add(f);
      let bytes = this.encoded.get(f);
      if (!bytes) {
        bytes = toBinary(FileDescriptorProtoSchema, f.proto);
        this.encoded.set(f, bytes);
      }
      out.push(bytes);
      for (const dep of f.dependencies) visit(dep);
    };
    visit(file);
    return out;
  }

  answer(request: Request): Answer {
    const req = request.messageRequest;
    const notFound = (what: string): Answer => ({
      case: "errorResponse",
      value: { errorCode: Code.NotFound, errorMessage: `${what} not found` },
    });
    const files = (file: DescFile | undefined, what: string): Answer =>
      file ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: this.withDependencies(file) } } : notFound(what);
    switch (req.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: this.services.map((name) => ({ name })) } };
      case "fileByFilename":
        return files(this.files.get(req.value), `file ${req.value}`);
      case "fileContainingSymbol": {
        const name = req.value.startsWith(".") ? req.value.slice(1) : req.value;
        return files(this.symbols.get(name), `symbol ${req.value}`);
      }
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = req.value;
        const ext = this.extensions.find((x) => x.extendee.typeName === containingType && x.number === extensionNumber);
        return files(ext?.file, `extension ${extensionNumber} of ${containingType}`);
      }
      case "allExtensionNumbersOfType": {
        const type = req.value;
        if (!this.symbols.has(type)) return notFound(`type ${type}`);
        const numbers = this.extensions.filter((x) => x.extendee.typeName === type).map((x) => x.number);
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: type, extensionNumber: numbers.sort((a, b) => a - b) } };
      }
      default:
        return { case: "errorResponse", value: { errorCode: Code.InvalidArgument, errorMessage: "the request sets no message_request" } };
    }
  }
}

/**
 * withReflection wraps a router's routes so that, besides them, the router serves
 * grpc.reflection.v1.ServerReflection and grpc.reflection.v1alpha.ServerReflection, describing
 * every service the routes registered and the reflection services themselves.
 */
export function withReflection(routes: (router: ConnectRouter) => void, options: ReflectionOptions = {}): (router: ConnectRouter) => void {
  return (router) => {
    routes(router);
    const index = new Index([...router.handlers.map((h) => h.service), v1.ServerReflection, v1alpha.ServerReflection]);
    const check = async (context: HandlerContext) => {
      if (options.authenticate) await options.authenticate(context.requestHeader);
    };
    // v1 and v1alpha are the same protocol under two package names: one handler serves both.
    for (const version of [v1, v1alpha] as const) {
      router.service(version.ServerReflection as typeof v1.ServerReflection, {
        async *serverReflectionInfo(requests, context) {
          await check(context);
          for await (const request of requests) {
            yield create(version.ServerReflectionResponseSchema as typeof v1.ServerReflectionResponseSchema, {
              validHost: request.host,
              originalRequest: request,
              messageResponse: index.answer(request),
            });
          }
        },
      });
    }
  };
}
