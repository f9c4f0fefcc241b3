// The Executor's field rules for what a caller asks of it: the pages of a run listing, the names of
// run statuses, and what an invocation must carry. The Executor's handlers enforce them; the REST
// edge takes the names and bounds it shares from here.
import { RunStatus } from "../../gen/shaker/executor/v1/executor_pb.js";
import { invalidArgument as invalid } from "../shared/errors.js";

/** The page sizes of ListRuns: the default when a listing asks for none, and the most it may ask for. */
export const runPages = { defaultLimit: 20, maxLimit: 100 };

/** runStatuses are the names of run statuses in a REST query, as REST callers spell them. */
export const runStatuses: Readonly<Record<string, RunStatus>> = {
  queued: RunStatus.QUEUED,
  running: RunStatus.RUNNING,
  succeeded: RunStatus.SUCCEEDED,
  failed: RunStatus.FAILED,
  timed_out: RunStatus.TIMED_OUT,
  cancelled: RunStatus.CANCELLED,
};

/** inputRequired is the problem of an invocation that carries neither messages nor input. */
export const inputRequired = "either 'messages' or 'input' is required";

/** checkRunPage refuses a ListRuns offset or limit out of bounds (a limit of 0 is the default); it returns the limit to use. */
export function checkRunPage(offset: number, limit: number): number {
  if (offset < 0) throw invalid("offset must be 0 or more", "offset");
  if (limit < 0 || limit > runPages.maxLimit) throw invalid(`limit must be between 1 and ${runPages.maxLimit}`, "limit");
  return limit || runPages.defaultLimit;
}

/** idempotencyWindowMs is how long an Idempotency-Key names its run: 24 hours. */
export const idempotencyWindowMs = 24 * 60 * 60 * 1000;

/** maxAttempts bounds how often a run is executed: a run whose process keeps being killed fails at last. */
export const maxAttempts = 3;

/** idempotencyKeyProblem is what is wrong with an Idempotency-Key, or undefined: 1 to 255 printable ASCII characters. */
export function idempotencyKeyProblem(key: string): string | undefined {
  if (key.length === 0 || key.length > 255 || !/^[\x21-\x7e][\x20-\x7e]*$/.test(key)) {
    return "Idempotency-Key must be 1 to 255 printable ASCII characters";
  }
  return undefined;
}
