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
