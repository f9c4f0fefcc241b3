import { Code, ConnectError } from "@connectrpc/connect";
import { type Identity, type RunClaims, requireAccount } from "../shared/auth.js";

/** AdmissionOptions are the rules on who may start a run, and how many may run at once. */
export interface AdmissionOptions {
  /**
   * unconfinedRunsForAdminsOnly, when set, says why this host cannot confine runs: runs of accounts
   * other than admins' are then refused (FailedPrecondition), since they could read everybody's data.
   */
  unconfinedRunsForAdminsOnly?: string;
  maxConcurrentRuns: number;
  maxConcurrentRunsPerAccount: number;
  maxNestingDepth: number;
}

/** Caller is who asks for a run, once the rules on the caller alone let it. */
export interface Caller {
  accountId: string;
  /** parent is the claims of the run asking for a nested run, undefined for any other caller. */
  parent: RunClaims | undefined;
  /** depth is the nesting depth the new run gets: 0 for a top-level run. */
  depth: number;
}

/** Admission keeps the limits on runs of this server. */
export interface Admission {
  /** check applies the rules that need only the caller: where runs cannot be confined, admins only; nesting depth. */
  check(identity: Identity): Caller;
  /**
   * admit takes one of the server's and one of the account's places for a run, or refuses with
   * ResourceExhausted. The function it returns gives both back; calling it again does nothing.
   */
  admit(accountId: string): () => void;
  /** running is the number of places taken on this server. */
  running(): number;
}

/** createAdmission makes the admission of one server. */
export function createAdmission(options: AdmissionOptions): Admission {
  const perAccount = new Map<string, number>();
  let running = 0;
  return {
    check(identity) {
      const accountId = requireAccount(identity);
      // A run's own nested runs pass: only an admin's run can exist here.
      if (options.unconfinedRunsForAdminsOnly !== undefined && identity.kind === "key" && !identity.admin) {
        throw new ConnectError(
          `this server cannot confine runs (${options.unconfinedRunsForAdminsOnly}), so it runs only admin accounts' workflows; its operator can allow all knowingly with SHAKER_SANDBOX=none`,
          Code.FailedPrecondition,
        );
      }
      const parent = identity.kind === "run" ? identity.claims : undefined;
      const depth = parent ? parent.depth + 1 : 0;
      if (depth > options.maxNestingDepth) {
        throw new ConnectError(`workflow nesting is limited to ${options.maxNestingDepth} levels`, Code.FailedPrecondition);
      }
      return { accountId, parent, depth };
    },
    admit(accountId) {
      if (running >= options.maxConcurrentRuns) {
        throw new ConnectError(`the server runs ${options.maxConcurrentRuns} runs already; try again shortly`, Code.ResourceExhausted);
      }
      const mine = perAccount.get(accountId) ?? 0;
      if (mine >= options.maxConcurrentRunsPerAccount) {
        throw new ConnectError(
          `this account's concurrency limit (${options.maxConcurrentRunsPerAccount} runs) is reached; try again shortly`,
          Code.ResourceExhausted,
        );
      }
      running++;
      perAccount.set(accountId, mine + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        running--;
        const n = (perAccount.get(accountId) ?? 1) - 1;
        if (n <= 0) perAccount.delete(accountId);
        else perAccount.set(accountId, n);
      };
    },
    running: () => running,
  };
}
