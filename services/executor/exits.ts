import { Code, ConnectError } from "@connectrpc/connect";
import { RunStatus } from "../../gen/shaker/executor/v1/executor_pb.js";
import type { Frame } from "./events.js";

/** EndedBy is what the Executor ended a run for, when it did. */
export type EndedBy = "timeout" | "cancelled" | "disconnected";

/** RunError is an error as a run record keeps it. */
export interface RunError {
  type: string;
  message: string;
  traceback: string;
}

/** RunEnd is all a run's end is classified from. */
export interface RunEnd {
  /** endedBy is set when the Executor killed the run: the first reason wins. */
  endedBy: EndedBy | undefined;
  /** returned is true when the run's result frame arrived. */
  returned: boolean;
  /** error is the run's error frame (redacted), when one arrived. */
  error: RunError | undefined;
  exit: Pick<Frame<"exit">, "code" | "signal" | "output_truncated" | "memory_exceeded" | "worker_died">;
  /** timeoutSeconds is the version's timeout, as its timeout error names it. */
  timeoutSeconds: number;
}

/** Outcome is how a run ended: its status, the error its record keeps and, unless it succeeded, what its caller gets. */
export interface Outcome {
  status: RunStatus;
  error: RunError | undefined;
  failure: ConnectError | undefined;
}

/** classifyExit says how a run ended, from why it was killed (if it was), its last frames and its process's exit. */
export function classifyExit(end: RunEnd): Outcome {
  const { endedBy, exit } = end;
  let status: RunStatus;
  let error: RunError | undefined;
  if (endedBy === "timeout") {
    status = RunStatus.TIMED_OUT;
    error = { type: "TimeoutError", message: `the run exceeded its timeout of ${end.timeoutSeconds}s and was killed`, traceback: "" };
  } else if (endedBy) {
    status = RunStatus.CANCELLED;
    error = { type: "Cancelled", message: endedBy === "cancelled" ? "the run was cancelled" : "the caller disconnected", traceback: "" };
  } else if (end.returned && exit.code === 0) {
    return { status: RunStatus.SUCCEEDED, error: end.error, failure: undefined };
  } else {
    status = RunStatus.FAILED;
    error = end.error ?? { type: "ProcessCrashed", message: `the workflow did not finish: ${whyCrashed(exit)}`, traceback: "" };
  }
  return { status, error, failure: failureOf(status, error) };
}

/** failureOf is the error a caller gets for a run that ended in `status` with `error`: the same every time it is asked. */
export function failureOf(status: RunStatus, error: RunError): ConnectError {
  switch (status) {
    case RunStatus.TIMED_OUT:
      return new ConnectError(error.message, Code.DeadlineExceeded);
    case RunStatus.CANCELLED:
      return new ConnectError(error.message, Code.Canceled);
    default:
      return new ConnectError(`${error.type}: ${error.message}`, Code.Unknown);
  }
}

/**
 * isInterruption is true when a run's process was ended by a crash rather than by its workflow or a
 * limit: its worker died, or something outside killed it (SIGKILL that is not the Executor's, nor a
 * memory or output limit's). Such a run is resumed.
 */
export function isInterruption(end: RunEnd): boolean {
  const { exit } = end;
  if (end.endedBy || end.returned || exit.memory_exceeded || exit.output_truncated) return false;
  return exit.worker_died === true || (exit.signal === 9 && end.error === undefined);
}

/** What the signals a run's process most often dies of usually mean. */
const signalHints: Record<number, string> = {
  9: " (SIGKILL: memory or CPU limit, or killed from outside)",
  11: " (SIGSEGV: segmentation fault)",
};

/** whyCrashed says why a process that neither returned nor raised ended. */
function whyCrashed(exit: RunEnd["exit"]): string {
  if (exit.output_truncated) return "it wrote more output than the limit and was killed";
  if (exit.memory_exceeded) return "it used more memory than the run's limit (its processes and its /tmp together) and was killed";
  if (exit.signal) {
    return `its process was killed by signal ${exit.signal}${signalHints[exit.signal] ?? ""}`;
  }
  return `its process exited with code ${exit.code} before returning`;
}
