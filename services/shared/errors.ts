import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** errorMetadata names the metadata a service attaches to an error for the edge's one status table. */
export const errorMetadata = {
  /** param names the request field at fault (the edge answers it as the OpenAI error's `param`). */
  param: "shaker-param",
  /** limit marks a ResourceExhausted error as a size limit (HTTP 413), not a rate or concurrency limit (429). */
  limit: "shaker-limit",
  /** upstreamStatus marks an error as an upstream model's failure; its value is the HTTP status to answer (502 or 504). */
  upstreamStatus: "shaker-upstream-status",
  /** code is the REST API's error code for the error, when it has a more precise one than its status's (`invalid_record`). */
  code: "shaker-code",
} as const;

/** invalidArgument is an InvalidArgument error naming the field at fault, when there is one. */
export function invalidArgument(message: string, param?: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument, param ? { [errorMetadata.param]: param } : undefined);
}

/** tooLarge is a ResourceExhausted error for a size limit, naming the field at fault. */
export function tooLarge(message: string, param?: string): ConnectError {
  return new ConnectError(message, Code.ResourceExhausted, {
    [errorMetadata.limit]: "size",
    ...(param ? { [errorMetadata.param]: param } : {}),
  });
}

/**
 * describeCause says what went wrong in an unexpected error, for the operator's log: a database
 * error's own message, never drizzle's wrapping of it, which prints the query's parameters (a
 * caller's input, a script, a journaled answer).
 */
export function describeCause(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  if (e.name === "DrizzleQueryError" && e.cause instanceof Error) return `database: ${e.cause.message}`;
  return e.message;
}

/**
 * asConnectError is how an error leaves a service: a ConnectError as it is, anything else an
 * Internal "internal error" (its cause logged, never sent: it may hold another caller's data).
 */
export function asConnectError(e: unknown, where = ""): ConnectError {
  if (e instanceof ConnectError) return e;
  process.stderr.write(`internal error${where ? ` in ${where}` : ""}: ${describeCause(e)}\n`);
  return new ConnectError("internal error", Code.Internal, undefined, undefined, e);
}

/** mapErrors is a stream of messages whose error, if it ends with one, is what `map` makes of it. */
export async function* mapErrors<T>(messages: AsyncIterable<T>, map: (e: unknown) => unknown): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (e) {
    throw map(e);
  }
}

/** hideInternalErrors makes every error a service's handlers throw go out through asConnectError. */
export const hideInternalErrors: Interceptor = (next) => async (req) => {
  const where = `${req.service.typeName}/${req.method.name}`;
  try {
    const res = await next(req);
    return res.stream ? { ...res, message: mapErrors(res.message, (e) => asConnectError(e, where)) } : res;
  } catch (e) {
    throw asConnectError(e, where);
  }
};
