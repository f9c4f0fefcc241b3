import { Code, ConnectError } from "@connectrpc/connect";

/** errorMetadata names the metadata a service attaches to an error for the edge's one status table. */
export const errorMetadata = {
  /** param names the request field at fault (the edge answers it as the OpenAI error's `param`). */
  param: "shaker-param",
  /** limit marks a ResourceExhausted error as a size limit (HTTP 413), not a rate or concurrency limit (429). */
  limit: "shaker-limit",
  /** upstreamStatus marks an error as an upstream model's failure; its value is the HTTP status to answer (502 or 504). */
  upstreamStatus: "shaker-upstream-status",
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
