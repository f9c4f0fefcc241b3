import type { DescService } from "@bufbuild/protobuf";
import type { Client, HandlerContext, ServiceImpl } from "@connectrpc/connect";

/** The headers a forwarded call keeps: who calls (a run's token, a key, the services' credential) and its trace. */
const forwarded = ["authorization", "x-api-key", "x-shaker-service-token", "x-shaker-account", "traceparent", "tracestate"];

/**
 * forwardingImpl serves a service that runs elsewhere by calling it there: each method passes its
 * request, its caller's credential and trace, its deadline and its cancellation on to `client`. The
 * Executor serves the services a run calls through its run's socket this way in split mode (a
 * confined run has no network), so the journal sees every call whichever process answers it.
 * `vouch` gives headers to add to a call (awaited before it is passed on; a throw refuses the call).
 */
export function forwardingImpl<S extends DescService>(
  service: S,
  client: Client<S>,
  vouch?: (requestHeader: Headers) => Promise<Record<string, string> | undefined>,
): ServiceImpl<S> {
  const options = async (ctx: HandlerContext) => {
    const headers = new Headers();
    for (const name of forwarded) {
      const value = ctx.requestHeader.get(name);
      if (value !== null) headers.set(name, value);
    }
    for (const [name, value] of Object.entries((await vouch?.(ctx.requestHeader)) ?? {})) headers.set(name, value);
    return { headers, signal: ctx.signal, timeoutMs: ctx.timeoutMs() };
  };
  const impl: Record<string, unknown> = {};
  const methods = client as unknown as Record<string, (req: unknown, o: unknown) => unknown>;
  for (const method of service.methods) {
    const call = methods[method.localName];
    if (method.methodKind === "unary") {
      impl[method.localName] = async (req: unknown, ctx: HandlerContext) => call(req, await options(ctx));
    } else if (method.methodKind === "server_streaming") {
      impl[method.localName] = async function* (req: unknown, ctx: HandlerContext) {
        yield* call(req, await options(ctx)) as AsyncIterable<unknown>;
      };
    }
  }
  return impl as ServiceImpl<S>;
}
