import { create, type DescMessage, type DescMethod, type DescService, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextValues,
  createHandlerContext,
  type HandlerContext,
  type ServiceImpl,
  type Transport,
} from "@connectrpc/connect";

import { asConnectError } from "./errors.js";

type AnyImpl = (input: unknown, ctx: HandlerContext) => unknown;

/**
 * A call's context is aborted when the call ends, to release what listens to its signal. With this
 * reason rather than none: abort() without one builds a DOMException (with its stack) every call.
 */
const callEnded = new ConnectError("the call ended", Code.Canceled);
/** callersOwn are the errors a caller's own request stream threw, as its handler read it. */
const callersOwn = new WeakSet<object>();

/** What a call's HandlerContext is made from (createHandlerContext's init, less the deadline). */
type CallInit = {
  service: DescService;
  method: DescMethod;
  protocolName: string;
  requestMethod: string;
  url: string;
  /** requestSignal is the caller's signal, or what makes it when the handler first reads its own. */
  requestSignal: AbortSignal | (() => AbortSignal) | undefined;
  /** requestHeader is copied, unless it is a Headers the call may keep (`adoptHeader`). */
  requestHeader: HeadersInit | undefined;
  adoptHeader?: boolean;
};

/** A HandlerContext that can be ended: aborted, with a reason, when its call is over. */
type EndableContext = HandlerContext & { abort(reason?: unknown): void };

/**
 * LazyContext is the HandlerContext of a call without a deadline, as createHandlerContext builds it
 * but paying only for what the handler uses: its signal (linked to the caller's) and its response
 * headers are made when first read. createHandlerContext makes two AbortControllers, three Headers
 * and their listeners for every call, 15 µs here, and most calls (a Registry lookup) read none of it.
 *
 * A class, not an object literal with getters: a literal's getters are closures of their own call,
 * so V8 gives every such object a map of its own, in the old generation, which holds the closures,
 * and through them the whole call, alive through every young-generation collection until the next
 * full one. With a literal here, each of the ModelProxy's calls through the edge left 12 KB to be
 * copied twice and promoted: collections of 4-6 ms every 60 ms, the proxy's p99
 * (bench/modelproxy.ts). The same holds for the responses below.
 */
class LazyContext implements EndableContext {
  readonly service: DescService;
  readonly method: DescMethod;
  readonly protocolName: string;
  readonly requestMethod: string;
  readonly url: string;
  readonly requestHeader: Headers;
  private readonly callerSignal: AbortSignal | (() => AbortSignal) | undefined;
  private controller: AbortController | undefined;
  private unlink: (() => void) | undefined;
  private ended = false;
  private endReason: unknown;
  private header: Headers | undefined;
  private trailer: Headers | undefined;
  private contextValues: ReturnType<typeof createContextValues> | undefined;

  constructor(init: CallInit) {
    this.service = init.service;
    this.method = init.method;
    this.protocolName = init.protocolName;
    this.requestMethod = init.requestMethod;
    this.url = init.url;
    this.requestHeader = init.adoptHeader && init.requestHeader instanceof Headers ? init.requestHeader : new Headers(init.requestHeader);
    this.callerSignal = init.requestSignal;
  }

  timeoutMs(): undefined {
    return undefined;
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      const c = (this.controller = new AbortController());
      const caller = typeof this.callerSignal === "function" ? this.callerSignal() : this.callerSignal;
      if (this.ended) c.abort(this.endReason);
      else if (caller?.aborted) c.abort(caller.reason);
      else if (caller) {
        const onAbort = () => c.abort(caller.reason);
        caller.addEventListener("abort", onAbort, { once: true });
        this.unlink = () => caller.removeEventListener("abort", onAbort);
      }
    }
    return this.controller.signal;
  }

  get responseHeader(): Headers {
    return (this.header ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this.trailer ??= new Headers());
  }

  get values(): ReturnType<typeof createContextValues> {
    return (this.contextValues ??= createContextValues());
  }

  /** headerIfSet is the response headers, if the handler set any. */
  headerIfSet(): Headers | undefined {
    return this.header;
  }

  /** trailerIfSet is the response trailers, if the handler set any. */
  trailerIfSet(): Headers | undefined {
    return this.trailer;
  }

  abort(reason?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.endReason = reason;
    this.unlink?.();
    this.controller?.abort(reason);
  }
}

/** CallResponse is what a call answers the transport's caller: its headers are read from the handler's context when asked for. */
class CallResponse<S extends boolean, D extends DescMethod, M> {
  readonly service: DescService;
  constructor(
    readonly stream: S,
    readonly method: D,
    private readonly ctx: HandlerContext,
    readonly message: M,
  ) {
    this.service = method.parent;
  }

  get header(): Headers {
    return this.ctx.responseHeader;
  }

  get trailer(): Headers {
    return this.ctx.responseTrailer;
  }
}

// The two generators of a streaming call are declared once, here, not in the call: a generator
// function made per call gives each of its generator objects a prototype, and so a map, of its own,
// and those maps (old-generation objects) kept every call alive through young-generation
// collections, as the literals' getters did above.

/** requests are a client or bidi stream's messages as the handler reads them; the caller's own errors are marked as such. */
async function* requests(input: AsyncIterable<unknown>, schema: DescMessage): AsyncGenerator<unknown> {
  try {
    for await (const message of input) yield create(schema, message as never);
  } catch (e) {
    if (typeof e === "object" && e !== null) callersOwn.add(e);
    throw e;
  }
}

/** responses are what the handler produced (a message or an iterable of them), as the caller reads them; the call ends with them. */
async function* responses(produced: unknown, schema: DescMessage, ctx: EndableContext): AsyncGenerator<unknown> {
  try {
    const iterable = (await produced) as AsyncIterable<unknown> | unknown;
    if (iterable && typeof (iterable as AsyncIterable<unknown>)[Symbol.asyncIterator] === "function") {
      for await (const message of iterable as AsyncIterable<unknown>) {
        yield create(schema, message as never);
      }
    } else {
      yield create(schema, iterable as never);
    }
  } catch (e) {
    ctx.abort(e);
    // The caller's own request stream failed (its input was refused): the caller's error, given
    // back to it, not the service's (which would log it as internal).
    throw callersOwn.has(e as object) ? ConnectError.from(e) : asConnectError(e);
  } finally {
    ctx.abort(callEnded);
  }
}

/**
 * createDirectTransport connects co-located services without serialising anything: a call is the
 * handler's function call, with a real HandlerContext (headers, signal, deadline) as the Connect
 * server builds it. `createRouterTransport` encodes every request and response to bytes and back
 * (twice per call); on the invoke path (edge → Executor → Registry) that was a large share of the
 * CPU a run costs. Requests and responses are protobuf-es messages shared by reference: no service
 * mutates what it was given or what it returned.
 *
 * `routes` is the same function handed to the Connect server; only `router.service` is supported.
 */
export function createDirectTransport(routes: (router: ConnectRouter) => void): Transport {
  const served = collect(routes);

  function context(method: DescMethod, signal: AbortSignal | undefined, timeoutMs: number | undefined, header: HeadersInit | undefined) {
    return start(served, method, {
      protocolName: "direct",
      url: `direct:///${method.parent.typeName}/${method.name}`,
      requestSignal: signal,
      requestHeader: header,
      timeoutMs,
    });
  }

  return {
    async unary(method, signal, timeoutMs, header, input) {
      const { ctx, fn } = context(method, signal, timeoutMs, header);
      const output = (await invoke(fn, ctx, method, input)) as MessageShape<typeof method.output>;
      return new CallResponse(false, method, ctx, output);
    },

    async stream(method, signal, timeoutMs, header, input) {
      const { ctx, fn } = context(method, signal, timeoutMs, header);
      let request: unknown;
      if (method.methodKind === "server_streaming") {
        for await (const message of input) {
          request = create(method.input, message);
          break;
        }
      } else {
        request = requests(input, method.input);
      }
      const produced = fn(request, ctx);
      return new CallResponse(true, method, ctx, responses(produced, method.output, ctx)) as never;
    },
  };
}

/** Served is a service routed to a direct caller: its descriptor and its handlers. */
type Served = Map<string, { service: DescService; impl: Record<string, AnyImpl> }>;

/** collect takes the services `routes` registers (only `router.service` is supported). */
function collect(routes: (router: ConnectRouter) => void): Served {
  const served: Served = new Map();
  const collector = {
    service(service: DescService, impl: Partial<ServiceImpl<DescService>>) {
      served.set(service.typeName, { service, impl: impl as unknown as Record<string, AnyImpl> });
      return collector;
    },
    rpc() {
      throw new Error("a direct caller supports router.service only");
    },
    handlers: [],
  };
  routes(collector as unknown as ConnectRouter);
  return served;
}

/** How a call reached its handler: what start makes its context of. */
interface CallOrigin {
  protocolName: string;
  url: string;
  requestSignal: AbortSignal | (() => AbortSignal) | undefined;
  requestHeader: HeadersInit | undefined;
  timeoutMs: number | undefined;
}

/** start finds the handler of `method` and makes the call's context: a lazy one unless the call has a deadline. */
function start(served: Served, method: DescMethod, origin: CallOrigin, adoptHeader = false): { ctx: EndableContext; fn: AnyImpl } {
  const found = served.get(method.parent.typeName);
  const fn = found?.impl[method.localName];
  if (!found || typeof fn !== "function") {
    throw new ConnectError(`${method.parent.typeName}.${method.name} is not implemented`, Code.Unimplemented);
  }
  // Built property by property: with `const { timeoutMs, ...rest } = origin` and `{ ...rest, … }`
  // here, every unary call was copied by young collections again (test/young-garbage.test.ts).
  const init: CallInit = {
    service: found.service,
    method,
    protocolName: origin.protocolName,
    requestMethod: "POST",
    url: origin.url,
    requestSignal: origin.requestSignal,
    requestHeader: origin.requestHeader,
    adoptHeader,
  };
  let ctx: EndableContext;
  if (origin.timeoutMs === undefined) ctx = new LazyContext(init);
  else {
    const signal = typeof init.requestSignal === "function" ? init.requestSignal() : init.requestSignal;
    ctx = createHandlerContext({ ...init, requestSignal: signal, timeoutMs: origin.timeoutMs });
  }
  return { ctx, fn: fn.bind(found.impl) };
}

/** invoke runs a unary handler to its answer; the call ends with it, and its error leaves as asConnectError makes it. */
async function invoke(fn: AnyImpl, ctx: EndableContext, method: DescMethod, input: unknown, where?: string): Promise<unknown> {
  try {
    const output = await fn(create(method.input, input as never), ctx);
    return create(method.output, output as MessageInitShape<typeof method.output>);
  } catch (e) {
    ctx.abort(e);
    throw asConnectError(e, where);
  } finally {
    ctx.abort(callEnded);
  }
}

/** What a unary call that arrived over the network tells its handler. */
export interface UnaryOrigin {
  /** protocolName is the wire protocol the call came in ("connect", "grpc"). */
  protocolName: string;
  url: string;
  /** requestHeader is the call's own: the handler keeps it. */
  requestHeader: Headers;
  /** requestSignal makes the signal that ends when the caller leaves, if the handler asks for one. */
  requestSignal: () => AbortSignal;
  /** timeoutMs is the call's deadline, from its header. */
  timeoutMs: number | undefined;
}

/** A unary call's answer and the headers and trailers its handler set (undefined when it set none). */
export interface UnaryAnswer {
  message: unknown;
  header: Headers | undefined;
  trailer: Headers | undefined;
}

/**
 * DirectUnary calls the unary handlers of `routes` as the direct transport does, for a server that
 * has already read and decoded a call's request (services/shared/unary-fast-path.ts).
 */
export interface DirectUnary {
  /** method is the unary method at `path` ("/<service>/<Method>"), when a handler serves it. */
  method(path: string): DescMethod | undefined;
  /** call runs the handler; it throws what its error leaves as (asConnectError's, logged where internal). */
  call(method: DescMethod, origin: UnaryOrigin, input: unknown): Promise<UnaryAnswer>;
}

export function createDirectUnary(routes: (router: ConnectRouter) => void): DirectUnary {
  const served = collect(routes);
  const byPath = new Map<string, DescMethod>();
  for (const { service, impl } of served.values()) {
    for (const method of service.methods) {
      if (method.methodKind === "unary" && typeof impl[method.localName] === "function")
        byPath.set(`/${service.typeName}/${method.name}`, method);
    }
  }
  return {
    method: (path) => byPath.get(path),
    async call(method, origin, input) {
      const { ctx, fn } = start(served, method, origin, true);
      const message = await invoke(fn, ctx, method, input, `${method.parent.typeName}/${method.name}`);
      if (ctx instanceof LazyContext) return { message, header: ctx.headerIfSet(), trailer: ctx.trailerIfSet() };
      return { message, header: ctx.responseHeader, trailer: ctx.responseTrailer };
    },
  };
}
