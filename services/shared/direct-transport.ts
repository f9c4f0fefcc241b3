import { create, type DescMessage, type DescMethod, type DescService, type MessageInitShape } from "@bufbuild/protobuf";
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
  requestSignal: AbortSignal | undefined;
  requestHeader: HeadersInit | undefined;
};

/** A HandlerContext that can be ended: aborted, with a reason, when its call is over. */
type EndableContext = HandlerContext & { abort(reason?: unknown): void };

/**
 * lazyContext is the HandlerContext of a call without a deadline, as createHandlerContext builds it
 * but paying only for what the handler uses: its signal (linked to the caller's) and its response
 * headers are made when first read. createHandlerContext makes two AbortControllers, three Headers
 * and their listeners for every call, 15 µs here, and most calls (a Registry lookup) read none of it.
 */
function lazyContext(init: CallInit): EndableContext {
  const { service, method, requestSignal: callerSignal } = init;
  let controller: AbortController | undefined;
  let unlink: (() => void) | undefined;
  let ended = false;
  let endReason: unknown;
  let responseHeader: Headers | undefined;
  let responseTrailer: Headers | undefined;
  let values: ReturnType<typeof createContextValues> | undefined;
  return {
    service,
    method,
    protocolName: init.protocolName,
    requestMethod: init.requestMethod,
    url: init.url,
    requestHeader: new Headers(init.requestHeader),
    timeoutMs: () => undefined,
    get signal() {
      if (!controller) {
        const c = (controller = new AbortController());
        if (ended) c.abort(endReason);
        else if (callerSignal?.aborted) c.abort(callerSignal.reason);
        else if (callerSignal) {
          const onAbort = () => c.abort(callerSignal.reason);
          callerSignal.addEventListener("abort", onAbort, { once: true });
          unlink = () => callerSignal.removeEventListener("abort", onAbort);
        }
      }
      return controller.signal;
    },
    get responseHeader() {
      return (responseHeader ??= new Headers());
    },
    get responseTrailer() {
      return (responseTrailer ??= new Headers());
    },
    get values() {
      return (values ??= createContextValues());
    },
    abort(reason?: unknown) {
      if (ended) return;
      ended = true;
      endReason = reason;
      unlink?.();
      controller?.abort(reason);
    },
  };
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
  const impls = new Map<string, { service: DescService; impl: Record<string, AnyImpl> }>();
  const collector = {
    service(service: DescService, impl: Partial<ServiceImpl<DescService>>) {
      impls.set(service.typeName, { service, impl: impl as unknown as Record<string, AnyImpl> });
      return collector;
    },
    rpc() {
      throw new Error("createDirectTransport supports router.service only");
    },
    handlers: [],
  };
  routes(collector as unknown as ConnectRouter);

  function context(method: DescMethod, signal: AbortSignal | undefined, timeoutMs: number | undefined, header: HeadersInit | undefined) {
    const found = impls.get(method.parent.typeName);
    const fn = found?.impl[method.localName];
    if (!found || typeof fn !== "function") {
      throw new ConnectError(`${method.parent.typeName}.${method.name} is not implemented`, Code.Unimplemented);
    }
    const init: CallInit = {
      service: found.service,
      method,
      protocolName: "direct",
      requestMethod: "POST",
      url: `direct:///${method.parent.typeName}/${method.name}`,
      requestSignal: signal,
      requestHeader: header,
    };
    const ctx = timeoutMs === undefined ? lazyContext(init) : createHandlerContext({ ...init, timeoutMs });
    return { ctx, fn: fn.bind(found.impl) };
  }

  return {
    async unary(method, signal, timeoutMs, header, input) {
      const { ctx, fn } = context(method, signal, timeoutMs, header);
      try {
        const output = await fn(create(method.input, input), ctx);
        return {
          stream: false,
          service: method.parent,
          method,
          get header() {
            return ctx.responseHeader;
          },
          get trailer() {
            return ctx.responseTrailer;
          },
          message: create(method.output, output as MessageInitShape<typeof method.output>),
        };
      } catch (e) {
        ctx.abort(e);
        throw asConnectError(e);
      } finally {
        ctx.abort(callEnded);
      }
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
        request = (async function* () {
          try {
            for await (const message of input) yield create(method.input, message);
          } catch (e) {
            if (typeof e === "object" && e !== null) callersOwn.add(e);
            throw e;
          }
        })();
      }
      const produced = fn(request, ctx);
      const outputSchema: DescMessage = method.output;
      async function* messages() {
        try {
          const iterable = (await produced) as AsyncIterable<unknown> | unknown;
          if (iterable && typeof (iterable as AsyncIterable<unknown>)[Symbol.asyncIterator] === "function") {
            for await (const message of iterable as AsyncIterable<unknown>) {
              yield create(outputSchema, message as never);
            }
          } else {
            yield create(outputSchema, iterable as never);
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
      return {
        stream: true,
        service: method.parent,
        method,
        get header() {
          return ctx.responseHeader;
        },
        get trailer() {
          return ctx.responseTrailer;
        },
        message: messages() as never,
      };
    },
  };
}
