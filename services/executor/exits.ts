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
  exit: Pick<Frame<"exit">, "code" | "signal" | "output_truncated" | "memory_exceeded">;
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
  if (endedBy === "timeout") {
    const error = { type: "TimeoutError", message: `the run exceeded its timeout of ${end.timeoutSeconds}s and was killed`, traceback: "" };
    return { status: RunStatus.TIMED_OUT, error, failure: new ConnectError(error.message, Code.DeadlineExceeded) };
  }
  if (endedBy) {
    const error = {
      type: "Cancelled",
      message: endedBy === "cancelled" ? "the run was cancelled" : "the caller disconnected",
      traceback: "",
    };
    return { status: RunStatus.CANCELLED, error, failure: new ConnectError(error.message, Code.Canceled) };
  }
  if (end.returned && exit.code === 0) return { status: RunStatus.SUCCEEDED, error: end.error, failure: undefined };
  const error = end.error ?? { type: "ProcessCrashed", message: `the workflow did not finish: ${whyCrashed(exit)}`, traceback: "" };
  return { status: RunStatus.FAILED, error, failure: new ConnectError(`${error.type}: ${error.message}`, Code.Unknown) };
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
