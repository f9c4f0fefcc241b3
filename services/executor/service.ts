import { create, type JsonObject, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  ExecutorService,
  type FetchRequest,
  type Invocation,
  InvocationSchema,
  type RunResult,
  type RunSchema,
  type RunStarted,
  RunStatus,
} from "../../gen/shaker/executor/v1/executor_pb.js";
import { ExecutionMode, type WorkflowVersion } from "../../gen/shaker/registry/v1/registry_pb.js";
import { type Auth, type Identity, requireAccount } from "../shared/auth.js";
import type { Clients } from "../shared/clients.js";
import { invalidArgument } from "../shared/errors.js";
import { newId } from "../shared/ids.js";
import { fromValue, timestampOf, toValue } from "../shared/json.js";
import { createRunRedactor, redactJson } from "../shared/redact.js";
import { createTelemetry, type Span, SpanKind, type Telemetry, traceHeader } from "../shared/telemetry.js";
import { type AdmissionOptions, type Caller, createAdmission } from "./admission.js";
import { defaultTimeoutMs, type EgressOptions, egressFetch, type FetchOutput, type Hop, parseAllowList } from "./egress.js";
import { createFrameTranslator, emittedMessage, type Frame, logMessage, runResult, type StreamEvent } from "./events.js";
import { classifyExit, type EndedBy, failureOf, isInterruption } from "./exits.js";
import { checkAgainstSchema, type FieldSchema } from "./input-schema.js";
import { callSeqHeader, createJournalInterceptor, newRunJournal, type RunJournal } from "./journal.js";
import type { RunHandle, WorkerEvent, WorkerPool } from "./pool.js";
import { createRunRecorder } from "./recorder.js";
import { checkRunPage, idempotencyKeyProblem, idempotencyWindowMs, inputRequired, maxAttempts } from "./rules.js";
import { type Cursor, cursorId, cursorStart, parseCursor, RunEvents } from "./run-events.js";
import type { ExecutorStore, RunRow } from "./store.js";
import { createCallTracer } from "./trace-calls.js";

/** Options of createExecutorService. */
export interface ExecutorServiceOptions extends AdmissionOptions {
  store: ExecutorStore;
  pool: WorkerPool;
  auth: Auth;
  /** clients reach the other services: the Registry resolves the workflows runs are asked for. */
  clients: Pick<Clients, "registry">;
  /** rpcUrl is the address children call the services at, as they see it. */
  rpcUrl: () => string;
  /** limits are the resource limits of each child process. */
  limits: { memoryBytes: number; openFiles: number; fileBytes: number };
  /** maxLogLines caps the log lines kept on a run record. */
  maxLogLines?: number;
  /** maxEmittedBytes caps the emitted values kept on a run record (the stream still carries them all). */
  maxEmittedBytes?: number;
  /**
   * httpAllow lists what ctx.http may reach besides public addresses (`SHAKER_HTTP_ALLOW`): CIDR
   * ranges, IP addresses (optionally with :port) and host names (optionally *.suffix and :port);
   * see parseAllowList in egress.ts. A malformed entry fails the start.
   */
  httpAllow?: string[];
  /** httpMaxResponseBytes caps a ctx.http response body; default 32 MiB. */
  httpMaxResponseBytes?: number;
  /** executorId names this Executor on the records of the runs it runs. */
  executorId?: () => string;
  /**
   * liveExecutors are the ids of the executors the cluster lists as live (this one included), when
   * the store is shared with other executors (PostgreSQL); undefined when it is not shared (a SQLite
   * file is this executor's alone) or before the cluster first answered. See takeOver.
   */
  liveExecutors?: () => string[] | undefined;
  /** telemetry traces runs and their ctx calls; off when absent. */
  telemetry?: Telemetry;
  /**
   * disconnectGraceMs is how long a run whose every caller disconnected goes on, for one of them to
   * come back (a rejoin, an Idempotency-Key retry, an SDK retry), before it is cancelled. Default 5000.
   */
  disconnectGraceMs?: number;
}

/** A run keeps the first this many HTTP requests on its record. */
const maxHttpCalls = 1000;
/** A run may have this many ctx.http requests in flight at once. */
const maxHttpInFlight = 16;

/** A streaming run whose listener has this many bytes of messages unread is paused, until it reads down to the low mark. */
const streamHighWaterBytes = 1024 * 1024;
const streamLowWaterBytes = 256 * 1024;
/**
 * A run in flight keeps its latest events up to this many bytes, for listeners that come late (a
 * retry, a rejoin): enough for any rejoin from a recent cursor, little enough that an account's many
 * runs cannot hold the server's memory.
 */
const maxHistoryBytes = 2 * 1024 * 1024;

/** LiveRun is a run in flight: its events and how it ends. */
interface LiveRun {
  started: RunStarted;
  accountId: string;
  requestHash: string;
  /** events are the run's messages, for every listener from its own cursor. */
  events: RunEvents;
  cancel(reason: "cancelled" | "disconnected"): void;
  finished: Promise<RunResult>;
  /** secretValues are the run's secret values and those of the runs it nests in: none is ever recorded. */
  secretValues: string[];
  /** journal is the state of the run's journal of ctx calls. */
  journal: RunJournal;
  /** span is the run's trace span, when tracing is on: its ctx calls are its children. */
  span: Span | undefined;
  /** fetch makes one ctx.http request for the run and records it on the run. */
  fetch(req: FetchRequest, signal: AbortSignal): Promise<FetchOutput>;
  /**
   * attach counts a caller that waits for or streams the run; the function it returns says the caller
   * is gone. A run started by a caller that waits is cancelled once every caller has been gone for the
   * disconnect grace period.
   */
  attach(): () => void;
}

/** Admitted is a run that passed every check and holds its places (release gives them back). */
interface Admitted {
  caller: Caller;
  inv: Invocation;
  version: WorkflowVersion;
  input: JsonValue | undefined;
  secretValues: string[];
  release: () => void;
}

/** RunPlan is an admitted run with what it is known by: all it needs to start. */
interface RunPlan extends Admitted {
  runId: string;
  sessionId: string;
  /** createdAt is when the run was admitted, in milliseconds since the epoch. */
  createdAt: number;
  timeoutMs: number;
  metadata: JsonObject;
  /** idempotencyKey is the run's key in its account's namespace ("user:..." or "call:..."), or "". */
  idempotencyKey: string;
  /** attempt is 1, or the attempt a resumed run starts; attempts are the earlier ones. */
  attempt: number;
  attempts: { attempt: number; startedAt: number; endedAt: number; interrupted: boolean }[];
  /** waited is true when a caller waits for the run (Run, RunStream): it is cancelled when they all leave. */
  waited: boolean;
  /** traceparent is the trace the run's span belongs to (the invoking call's W3C header), if any. */
  traceparent: string | null;
  /** recorded is true for a run whose record exists already (claimed from the queue): its start is not written again. */
  recorded?: boolean;
}

/** How is what the call that asks for a run says about it besides the invocation. */
interface How {
  /** waited is true for Run and RunStream: the caller waits for the run. */
  waited: boolean;
  /** callSeq is the Shaker-Call-Seq of a nested run's call, which names it in its parent's journal. */
  callSeq: string | null;
  /** traceparent is the call's W3C trace context. */
  traceparent: string | null;
  /** queue is true for RunStream and StartRun: an async run may wait in the shared queue (see enqueue). */
  queue?: boolean;
}

/** deferred is a promise with its ends; its rejection never counts as unhandled (nobody may wait for it). */
function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/** listenOverride is true when the caller asked to stream, which keeps even an async workflow attached. */
function listenOverride(inv: Invocation): boolean {
  return inv.params?.stream === true;
}

/**
 * storedInvocation is the invocation a run's record keeps for starting it without its caller
 * (resumed, or claimed from the queue): its record's `resume`, which only runs without secrets have.
 */
function storedInvocation(row: RunRow): Invocation {
  const stored = row.resume!;
  return {
    workflowRefName: row.workflowRefName,
    version: row.version,
    input: stored.hasInput ? toValue(row.input) : undefined,
    hasInput: stored.hasInput,
    messages: stored.messages as JsonObject[],
    secrets: {},
    metadata: (row.metadata ?? {}) as JsonObject,
    params: stored.params as JsonObject,
    sessionId: row.sessionId,
    idempotencyKey: "",
    requestHash: row.requestHash,
    retryCount: 0,
  } as unknown as Invocation;
}

/** recordsReader returns the account of a caller that may read and cancel run records: not a run's token. */
function recordsReader(identity: Identity): string {
  if (identity.kind === "run") throw new ConnectError("a workflow run may not read or cancel run records", Code.PermissionDenied);
  return requireAccount(identity);
}

const invalid = invalidArgument;

/**
 * text is a caller's text the store keeps or looks up, refused when it holds a NUL character:
 * PostgreSQL's text cannot hold one, so neither database takes it.
 */
function text(value: string, param: string): string {
  if (value.includes("\0")) throw invalid(`${param} must not contain NUL characters`, param);
  return value;
}

/** inputOf is an invocation's input, checked against its version's INPUT_SCHEMA; a nested run may have neither input nor messages. */
function inputOf(inv: Invocation, version: WorkflowVersion, nested: boolean): JsonValue | undefined {
  const input: JsonValue | undefined = inv.hasInput || inv.input ? fromValue(inv.input) : undefined;
  if (!inv.hasInput && !inv.input && inv.messages.length === 0 && !nested) {
    throw invalid(inputRequired, "messages");
  }
  const problem = checkAgainstSchema("input", input ?? null, version.inputSchema as Record<string, FieldSchema> | undefined);
  if (problem) throw invalid(problem.message, problem.param);
  return input;
}

/** outputWarnings are the warnings on a run's output: where it does not fit OUTPUT_SCHEMA. */
function outputWarnings(output: unknown, version: WorkflowVersion): string[] {
  const problem = checkAgainstSchema("output", output ?? null, version.outputSchema as Record<string, FieldSchema> | undefined);
  return problem ? [`OUTPUT_SCHEMA: ${problem.message}`] : [];
}

/**
 * runFetcher is ctx.http for one run: the run has no network, so the Executor makes the request,
 * within the run's remaining time (until `deadline`), and records every hop; end() aborts the
 * requests in flight when the run ends.
 */
function runFetcher(deadline: number, egress: EgressOptions, record: (hop: Hop) => void) {
  let inFlight = 0;
  const ended = new AbortController();
  async function fetch(req: FetchRequest, signal: AbortSignal): Promise<FetchOutput> {
    if (!(req.timeoutSeconds >= 0)) throw invalid("timeout_seconds must be 0 or more", "timeout_seconds");
    const remaining = deadline - Date.now();
    if (remaining <= 0) throw new ConnectError("the run has no time left for an HTTP request", Code.DeadlineExceeded);
    if (inFlight >= maxHttpInFlight) {
      throw new ConnectError(`a run may have at most ${maxHttpInFlight} HTTP requests in flight`, Code.ResourceExhausted);
    }
    const aborted = new AbortController();
    const abort = () => aborted.abort();
    signal.addEventListener("abort", abort, { once: true });
    ended.signal.addEventListener("abort", abort, { once: true });
    if (signal.aborted || ended.signal.aborted) abort();
    inFlight++;
    try {
      const asked = req.timeoutSeconds > 0 ? req.timeoutSeconds * 1000 : defaultTimeoutMs;
      return await egressFetch(
        {
          method: req.method,
          url: req.url,
          headers: req.headers,
          body: req.body,
          timeoutMs: Math.min(asked, remaining),
          signal: aborted.signal,
        },
        egress,
        record,
      );
    } finally {
      inFlight--;
      signal.removeEventListener("abort", abort);
      ended.signal.removeEventListener("abort", abort);
    }
  }
  return { fetch, end: () => ended.abort() };
}

/** The answer to an invocation: a run in flight to attach to, or the record of one that ended. */
type Target = { live: LiveRun; row?: undefined } | { live?: undefined; row: RunRow };

/** createExecutorService builds the Executor's handlers over its store and worker pool. */
export function createExecutorService(options: ExecutorServiceOptions) {
  const { store, pool, auth } = options;
  const { registry } = options.clients;
  const recordLimits = { maxLogLines: options.maxLogLines ?? 1000, maxEmittedBytes: options.maxEmittedBytes ?? 1024 * 1024, maxHttpCalls };
  const disconnectGraceMs = options.disconnectGraceMs ?? 5000;
  const telemetry = options.telemetry ?? createTelemetry({});
  const executorId = options.executorId ?? (() => "");
  const live = new Map<string, LiveRun>();
  /** keyed holds the answers of invocations with a key that are being worked out, for a duplicate arriving meanwhile. */
  const keyed = new Map<string, Promise<Target>>();
  /** waiting are the interrupted runs that wait for their caller to come back and resume them. */
  const waiting = new Map<string, NodeJS.Timeout>();
  /** resuming are the interrupted runs being resumed, until they are live. */
  const resuming = new Map<string, Promise<LiveRun>>();
  const admission = createAdmission(options);
  const egress = { allow: parseAllowList(options.httpAllow ?? []), maxResponseBytes: options.httpMaxResponseBytes };
  let closing = false;
  /** takingOver is true while a takeOver runs: a heartbeat that comes meanwhile skips its own. */
  let takingOver = false;
  /** claiming is true while claimQueued claims: a tick that comes meanwhile skips its own. */
  let claiming = false;
  // On a shared database, queued runs are claimed a few times a second (and after each enqueue here).
  const claimTimer = options.liveExecutors ? setInterval(() => void claimQueued(), 250) : undefined;
  claimTimer?.unref();

  async function resolve(accountId: string, inv: Pick<Invocation, "workflowRefName" | "version">): Promise<WorkflowVersion> {
    if (!inv.workflowRefName) throw invalid("workflow_ref_name is required", "model");
    const { version } = await registry.resolveWorkflow(
      { workflowRefName: inv.workflowRefName, version: inv.version },
      { headers: auth.serviceHeaders(accountId) },
    );
    if (!version) throw new ConnectError("workflow not found", Code.NotFound);
    return version;
  }

  /**
   * start answers an invocation with the run it means: a run in flight or ended that the invocation
   * is a retry of (same idempotency key, or an SDK retry of the same request), resumed when it was
   * interrupted; otherwise a new run. Everything that can be checked before a process exists is
   * checked here, so every such error is the caller's, before any stream message.
   */
  async function start(identity: Identity, inv: Invocation, how: How): Promise<Target> {
    const caller = admission.check(identity);
    text(inv.sessionId, "session_id");
    text(inv.requestHash, "request_hash");
    let key = "";
    if (inv.idempotencyKey) {
      const problem = idempotencyKeyProblem(inv.idempotencyKey);
      if (problem) throw invalid(problem, "idempotency_key");
      key = `user:${inv.idempotencyKey}`;
    } else if (caller.parent && how.callSeq !== null) {
      // A nested run is its parent's ctx call: a resumed parent that calls again gets the same run.
      key = `call:${caller.parent.run}:${how.callSeq}`;
    }
    if (key) {
      const slot = `${caller.accountId}\n${key}`;
      const earlier = keyed.get(slot);
      if (earlier) return matching(await earlier, inv, key);
      const answer = (async () => {
        const row = await store.runByKey(caller.accountId, key, Date.now() - idempotencyWindowMs);
        if (row) return await retryOf(row, caller, inv, how, key);
        return await newRun(caller, inv, how, key);
      })();
      keyed.set(slot, answer);
      try {
        return await answer;
      } finally {
        keyed.delete(slot);
      }
    }
    if (inv.retryCount > 0 && inv.requestHash) {
      const attached = await sdkRetryOf(caller.accountId, inv.requestHash);
      if (attached) return attached.live ? attached : await retryOf(attached.row, caller, inv, how, "");
    }
    return await newRun(caller, inv, how, "");
  }

  /** matching is a target for an invocation with its key, refused when the key was used for another request. */
  function matching(target: Target, inv: Invocation, key: string): Target {
    const hash = target.live ? target.live.requestHash : target.row.requestHash;
    if (hash !== inv.requestHash) {
      const name = key.startsWith("user:") ? `Idempotency-Key '${key.slice(5)}'` : "this call";
      throw new ConnectError(`${name} was already used for another request; use a new key for a new request`, Code.AlreadyExists);
    }
    return target;
  }

  /** retryOf is what an invocation that retries the run of `row` gets: that run, live, resumed or ended. */
  async function retryOf(row: RunRow, caller: Caller, inv: Invocation, how: How, key: string): Promise<Target> {
    if (key) matching({ row }, inv, key);
    const running = live.get(row.id);
    if (running) return { live: running };
    if (row.status !== RunStatus.RUNNING && row.status !== RunStatus.QUEUED) return { row };
    // Waiting in the queue: it starts when an executor claims it.
    if (row.status === RunStatus.QUEUED && row.executor === "") return { row };
    // Interrupted by a crash: the caller came back, with the secrets it had, to resume it.
    return { live: await resume(row, caller, inv, how) };
  }

  /**
   * sdkRetryOf is the run an SDK's own retry attaches to: the latest of the account with the same
   * request, when it is in flight (or interrupted) or ended within its timeout.
   */
  async function sdkRetryOf(accountId: string, requestHash: string): Promise<Target | undefined> {
    for (const run of live.values()) if (run.accountId === accountId && run.requestHash === requestHash) return { live: run };
    const row = await store.runByRequest(accountId, requestHash);
    if (!row) return undefined;
    if (row.status === RunStatus.RUNNING || row.status === RunStatus.QUEUED) return { row };
    return row.finishedAt !== null && Date.now() - row.finishedAt <= row.timeoutMs ? { row } : undefined;
  }

  /**
   * newRun starts a new run: here, or, for an async run on a database the executors share, in the
   * queue any of them claims from (claimQueued). A run with secrets never waits there: they are
   * never stored, so it runs here, where they are.
   */
  async function newRun(caller: Caller, inv: Invocation, how: How, idempotencyKey: string): Promise<Target> {
    const version = await resolve(caller.accountId, inv);
    if (how.queue && options.liveExecutors && !caller.parent && Object.keys(inv.secrets).length === 0 && !listenOverride(inv)) {
      if (version.executionMode === ExecutionMode.ASYNC) return { row: await enqueue(caller, inv, version, idempotencyKey) };
    }
    return { live: await launchNew(caller, inv, version, how, idempotencyKey) };
  }

  /** enqueue records an async run as queued, for any executor to claim. */
  async function enqueue(caller: Caller, inv: Invocation, version: WorkflowVersion, idempotencyKey: string): Promise<RunRow> {
    const input = inputOf(inv, version, false);
    const id = newId("run");
    await store.enqueueRun({
      id,
      accountId: caller.accountId,
      workflowRefName: version.workflowRefName,
      version: version.version,
      versionId: version.versionId,
      sessionId: inv.sessionId || newId("sess"),
      status: RunStatus.QUEUED,
      input: input ?? null,
      metadata: (inv.metadata ?? {}) as JsonObject,
      createdAt: Date.now(),
      startedAt: null,
      parentRunId: "",
      depth: 0,
      idempotencyKey,
      requestHash: inv.requestHash,
      detached: 1,
      hasSecrets: 0,
      timeoutMs: Math.max(1, version.timeoutSeconds) * 1000,
      resume: { messages: inv.messages, params: inv.params ?? {}, hasInput: inv.hasInput || inv.input !== undefined },
      attempt: 1,
    });
    void claimQueued();
    return (await store.run(caller.accountId, id))!;
  }

  /**
   * claimQueued claims queued runs while this executor has room, and starts them. Every executor
   * on a shared database calls it after each enqueue and a few times a second.
   */
  async function claimQueued(): Promise<void> {
    if (!options.liveExecutors || closing || claiming) return;
    claiming = true;
    try {
      for (;;) {
        const room = Math.min(16, options.maxConcurrentRuns - admission.running());
        if (room <= 0) return;
        const rows = await store.claimQueued(executorId(), room, Date.now());
        if (rows.length === 0) return;
        const started = await Promise.all(rows.map(startQueued));
        // A run given back (its account at its limit) is claimed again at the next tick, not now.
        if (started.includes(false)) return;
      }
    } catch (e) {
      process.stderr.write(`could not claim queued runs: ${(e as Error).message}\n`);
    } finally {
      claiming = false;
    }
  }

  /** startQueued starts a run claimed from the queue; false when it was given back. */
  async function startQueued(row: RunRow): Promise<boolean> {
    let version: WorkflowVersion;
    try {
      version = await resolve(row.accountId, { workflowRefName: row.workflowRefName, version: row.version });
    } catch (e) {
      const error = ConnectError.from(e);
      await store
        .failRun(row.id, row.attempt, RunStatus.FAILED, {
          type: "WorkflowNotFound",
          message: `it could not start: ${error.rawMessage}`,
          traceback: "",
        })
        .catch(() => undefined);
      return true;
    }
    let release: () => void;
    try {
      release = admission.admit(row.accountId);
    } catch {
      await store.requeue(row.id, executorId()).catch(() => undefined);
      return false;
    }
    const inv = storedInvocation(row);
    try {
      launch({
        caller: { accountId: row.accountId, parent: undefined, depth: 0 },
        inv,
        version,
        input: inputOf(inv, version, false),
        secretValues: [],
        release,
        runId: row.id,
        sessionId: row.sessionId,
        createdAt: row.createdAt,
        timeoutMs: row.timeoutMs,
        metadata: (row.metadata ?? {}) as JsonObject,
        idempotencyKey: row.idempotencyKey,
        attempt: 1,
        attempts: [],
        waited: false,
        traceparent: null,
        recorded: true,
      });
    } catch (e) {
      release();
      await store
        .failRun(row.id, row.attempt, RunStatus.FAILED, {
          type: "StartFailed",
          message: `it could not start: ${ConnectError.from(e).rawMessage}`,
          traceback: "",
        })
        .catch(() => undefined);
    }
    return true;
  }

  /** launchNew checks and admits a new run of `version` and launches it. */
  async function launchNew(caller: Caller, inv: Invocation, version: WorkflowVersion, how: How, idempotencyKey: string): Promise<LiveRun> {
    const input = inputOf(inv, version, caller.parent !== undefined);
    const secretValues = secretsOf(caller, inv);
    const release = admission.admit(caller.accountId);
    try {
      const createdAt = Date.now();
      return launch({
        caller,
        inv,
        version,
        input,
        secretValues,
        release,
        runId: newId("run"),
        sessionId: inv.sessionId || caller.parent?.session || newId("sess"),
        createdAt,
        timeoutMs: Math.max(1, version.timeoutSeconds) * 1000,
        metadata: (inv.metadata ?? {}) as JsonObject,
        idempotencyKey,
        attempt: 1,
        attempts: [],
        waited: how.waited,
        traceparent: how.traceparent,
      });
    } catch (e) {
      release();
      throw e;
    }
  }

  /**
   * secretsOf are the values never to record for a run: its own secrets and its ancestors' (a parent
   * passes them on in input, messages or metadata; the nested run itself still receives them).
   */
  function secretsOf(caller: Caller, inv: Invocation): string[] {
    const parentRun = caller.parent ? live.get(caller.parent.run) : undefined;
    if (caller.parent && !parentRun) throw new ConnectError("the run this token was given to has ended", Code.Unauthenticated);
    return [...Object.values(inv.secrets), ...(parentRun?.secretValues ?? [])];
  }

  /**
   * resume starts the next attempt of a run a crash interrupted, from its record: with the
   * invocation of the caller that came back (it carries the secrets), or with what the record keeps.
   * Whoever resumes it while it resumes (two callers coming back at once, a rejoin) gets the same run.
   */
  function resume(row: RunRow, caller: Caller | undefined, inv: Invocation | undefined, how: How): Promise<LiveRun> {
    const running = live.get(row.id);
    if (running) return Promise.resolve(running);
    let resumed = resuming.get(row.id);
    if (!resumed) {
      resumed = resumeNow(row, caller, inv, how).finally(() => resuming.delete(row.id));
      resuming.set(row.id, resumed);
    }
    return resumed;
  }

  async function resumeNow(row: RunRow, caller: Caller | undefined, inv: Invocation | undefined, how: How): Promise<LiveRun> {
    clearTimeout(waiting.get(row.id));
    waiting.delete(row.id);
    if (!inv && (row.hasSecrets || !row.resume)) {
      throw new ConnectError(
        `run '${row.id}' was interrupted, and it was given secrets, which are never stored: it resumes when its caller retries the request with them`,
        Code.FailedPrecondition,
      );
    }
    const invocation = inv ?? storedInvocation(row);
    const who = caller ?? { accountId: row.accountId, parent: undefined, depth: row.depth };
    let version: WorkflowVersion;
    try {
      version = await resolve(row.accountId, { workflowRefName: row.workflowRefName, version: row.version });
    } catch (e) {
      const error = ConnectError.from(e);
      if (error.code === Code.NotFound) await abandon(row, "its workflow version no longer exists");
      throw error;
    }
    const secretValues = secretsOf(who, invocation);
    const owner = row.executor;
    if (owner !== executorId() && options.liveExecutors?.()?.includes(owner)) {
      throw new ConnectError(`run '${row.id}' is in flight on executor '${owner}'; retry shortly`, Code.Unavailable);
    }
    const release = admission.admit(row.accountId);
    const now = Date.now();
    const attempts = [
      ...(row.attempts ?? []),
      { attempt: row.attempt, startedAt: row.startedAt ?? row.createdAt, endedAt: now, interrupted: true },
    ];
    try {
      // Claimed by its attempt number: of executors resuming it at once (callers coming back to two
      // of them, two taking over a dead one's runs), one does.
      if (!(await store.resumeRun(row.id, row.attempt, row.attempt + 1, attempts, now, executorId()))) {
        throw new ConnectError(`run '${row.id}' was resumed elsewhere; retry shortly`, Code.Aborted);
      }
      return launch({
        caller: who,
        inv: invocation,
        version,
        input: inputOf(invocation, version, row.depth > 0),
        secretValues,
        release,
        runId: row.id,
        sessionId: row.sessionId,
        createdAt: row.createdAt,
        timeoutMs: Math.max(1, version.timeoutSeconds) * 1000,
        metadata: (invocation.metadata ?? {}) as JsonObject,
        idempotencyKey: row.idempotencyKey,
        attempt: row.attempt + 1,
        attempts,
        waited: how.waited || row.detached === 0,
        traceparent: how.traceparent,
      });
    } catch (e) {
      release();
      throw e;
    }
  }

  /** launch records an admitted run (unless it resumes), hands it to the pool and follows it to its end, attempt after attempt. */
  function launch(run: RunPlan): LiveRun {
    const { caller, inv, version, runId, sessionId, createdAt } = run;
    const redact = createRunRedactor(run.secretValues);
    const recorder = createRunRecorder(redact, recordLimits);
    const journal = newRunJournal(run.attempt, run.secretValues);
    const span = telemetry.startSpan(`run ${version.workflowRefName}`, {
      parent: run.traceparent,
      kind: SpanKind.INTERNAL,
      attributes: {
        "shaker.run.id": runId,
        "shaker.run.attempt": run.attempt,
        "shaker.workflow": version.workflowRefName,
        "shaker.workflow.version": version.version,
        "shaker.session.id": sessionId,
        "shaker.account.id": caller.accountId,
      },
    });
    const started: RunStarted = {
      $typeName: "shaker.executor.v1.RunStarted",
      runId,
      sessionId,
      workflowRefName: version.workflowRefName,
      version: version.version,
      detached: version.executionMode === ExecutionMode.ASYNC && !listenOverride(inv),
      createdAt: timestampOf(createdAt),
      attempt: run.attempt,
    };
    // Nobody waits for an async run (unless they asked to stream it).
    if (started.detached) run.waited = false;
    // A slow listener holds the run back: past the high mark its child is paused (it blocks in
    // ctx.emit once its pipe is full), and resumed when the listener has read down to the low mark.
    const events = new RunEvents({
      highWaterBytes: streamHighWaterBytes,
      lowWaterBytes: streamLowWaterBytes,
      maxHistoryBytes,
      pause: () => handle?.pause(),
      resume: () => handle?.resume(),
    });
    const finished = deferred<RunResult>();
    let endedBy: EndedBy | undefined;
    let handle: RunHandle | undefined;
    let timer: NodeJS.Timeout | undefined;
    let attemptStartedAt = Date.now();
    let callers = 0;
    let grace: NodeJS.Timeout | undefined;
    const fetcher = runFetcher(attemptStartedAt + run.timeoutMs, egress, recorder.http);

    /** execute starts one attempt: an attempt after an interruption skips what the earlier ones already delivered. */
    function execute(skip: Cursor): void {
      const frames = createFrameTranslator();
      const seen = { emitted: 0, logs: 0 };
      let returned: Frame<"result"> | undefined;
      let raised: Frame<"error"> | undefined;
      const onEvent = (event: WorkerEvent, bytes: number): void => {
        for (const line of frames.logs(event)) {
          if (seen.logs++ < skip.logs) continue;
          // Recorded whether or not anybody listens (async and nested runs have no listener).
          events.publish(logMessage(recorder.log(line)));
        }
        if (event.t === "emit") {
          if (seen.emitted++ < skip.emitted) return;
          recorder.emitted(event, bytes);
          events.publish(emittedMessage(event, bytes));
        } else if (event.t === "result") returned = event;
        else if (event.t === "error") raised = event;
        else if (event.t === "exit") attemptEnded(event, returned, raised);
      };
      timer = setTimeout(() => end("timeout"), run.timeoutMs);
      handle = handOver(run, onEvent);
    }

    function attemptEnded(exit: Frame<"exit">, returned: Frame<"result"> | undefined, raised: Frame<"error"> | undefined): void {
      clearTimeout(timer);
      const outcome = {
        endedBy,
        returned: returned !== undefined,
        error: raised && recorder.raised(raised),
        exit,
        timeoutSeconds: version.timeoutSeconds,
      };
      if (isInterruption(outcome) && closing) shutDown();
      else if (isInterruption(outcome) && run.attempt < maxAttempts) again();
      else finish(outcome, returned);
    }

    /** again executes the run once more after an interruption, in this process. */
    function again(): void {
      const now = Date.now();
      run.attempts = [...run.attempts, { attempt: run.attempt, startedAt: attemptStartedAt, endedAt: now, interrupted: true }];
      run.attempt++;
      started.attempt = run.attempt;
      attemptStartedAt = now;
      journal.replaying = true;
      // Recorded in order with the run's end; nothing waits for it, as the run goes on in this process.
      store
        .resumeRun(runId, run.attempt - 1, run.attempt, run.attempts, now, executorId())
        .catch((e: Error) => process.stderr.write(`could not record attempt ${run.attempt} of run ${runId}: ${e.message}\n`));
      span?.addEvent("interrupted: executing again", { "shaker.run.attempt": run.attempt });
      process.stderr.write(`run ${runId}: its process was interrupted; executing it again (attempt ${run.attempt})\n`);
      execute(events.position);
    }

    /** shutDown leaves a run this server is shutting down recorded as in flight: the next start resumes it. */
    function shutDown(): void {
      live.delete(runId);
      run.release();
      fetcher.end();
      clearTimeout(grace);
      const failure = new ConnectError("the server is shutting down; retry the request to resume the run", Code.Unavailable);
      failure.metadata.set("shaker-run-id", runId);
      telemetry.end(span, failure);
      events.fail(failure);
      finished.reject(failure);
    }

    function finish(end: Parameters<typeof classifyExit>[0], returned: Frame<"result"> | undefined): void {
      live.delete(runId);
      run.release();
      fetcher.end();
      clearTimeout(grace);
      if (returned) recorder.returned(returned);
      const finishedAt = Date.now();
      const durationMs = finishedAt - createdAt;
      const { status, error, failure } = classifyExit(end);
      const warnings = recorder.warnings([
        ...(status === RunStatus.SUCCEEDED ? outputWarnings(returned!.output, version) : []),
        ...journal.warnings,
        ...(journal.unjournaled > 0 ? [`${journal.unjournaled} ctx call(s) held a secret value and were not journaled`] : []),
      ]);
      const attempts = [...run.attempts, { attempt: run.attempt, startedAt: attemptStartedAt, endedAt: finishedAt, interrupted: false }];
      const fields = recorder.fields({ status, error, warnings, finishedAt, durationMs });
      store.finishRun(
        runId,
        { ...fields, attempt: run.attempt, attempts: run.attempt > 1 ? attempts : null, unjournaledCalls: journal.unjournaled },
        journal.wrote,
      );
      span?.setAttributes({ "shaker.run.status": RunStatus[status].toLowerCase(), "shaker.run.attempt": run.attempt });
      telemetry.end(span, failure);
      if (failure) {
        failure.metadata.set("shaker-run-id", runId);
        events.fail(failure);
        finished.reject(failure);
        return;
      }
      const result = runResult(run, returned!, warnings, durationMs);
      events.finish({ event: { case: "result", value: result } });
      finished.resolve(result);
    }

    const end = (reason: EndedBy) => {
      endedBy ??= reason;
      handle?.kill();
    };
    if (run.attempt === 1 && !run.recorded) recordStart(run, redact);
    const liveRun: LiveRun = {
      started,
      accountId: caller.accountId,
      requestHash: inv.requestHash,
      events,
      finished: finished.promise,
      secretValues: run.secretValues,
      journal,
      span,
      fetch: fetcher.fetch,
      cancel: end,
      attach() {
        callers++;
        clearTimeout(grace);
        let gone = false;
        return () => {
          if (gone) return;
          gone = true;
          if (--callers > 0 || !run.waited || !live.has(runId)) return;
          grace = setTimeout(() => end("disconnected"), disconnectGraceMs);
        };
      },
    };
    live.set(runId, liveRun);
    execute(cursorStart);
    return liveRun;
  }

  /**
   * recordStart queues the run's row before the run exists, so it is written before its end (in the
   * same transaction or an earlier one), and while its child starts rather than before.
   */
  function recordStart(run: RunPlan, redact: (text: string) => string): void {
    const hasSecrets = Object.keys(run.inv.secrets).length > 0 || run.secretValues.length > 0;
    store.insertRun({
      id: run.runId,
      accountId: run.caller.accountId,
      workflowRefName: run.version.workflowRefName,
      version: run.version.version,
      versionId: run.version.versionId,
      sessionId: run.sessionId,
      status: RunStatus.RUNNING,
      input: redactJson(run.input ?? null, redact),
      metadata: redactJson(run.metadata, redact),
      createdAt: run.createdAt,
      startedAt: run.createdAt,
      parentRunId: run.caller.parent?.run ?? "",
      depth: run.caller.depth,
      idempotencyKey: run.idempotencyKey,
      requestHash: run.inv.requestHash,
      detached: run.waited ? 0 : 1,
      hasSecrets: hasSecrets ? 1 : 0,
      timeoutMs: run.timeoutMs,
      // What a resumed run is built from, unless it had secrets: those come back with its caller.
      resume: hasSecrets
        ? null
        : { messages: run.inv.messages, params: run.inv.params ?? {}, hasInput: run.inv.hasInput || run.inv.input !== undefined },
      attempt: 1,
      executor: executorId(),
    });
  }

  /** handOver mints the run's token and gives the run to the pool, with all its ctx is built from. */
  function handOver(run: RunPlan, onEvent: (event: WorkerEvent, bytes: number) => void): RunHandle {
    const { caller, inv, version } = run;
    const now = Date.now();
    const token = auth.mintRunToken({
      account: caller.accountId,
      workflow: version.workflowRefName,
      version: version.version,
      versionId: version.versionId,
      run: run.runId,
      session: run.sessionId,
      datastores: version.datastores.map((d) => ({ name: d.name, write: d.write })),
      depth: caller.depth,
      exp: now + run.timeoutMs + 60_000,
      executor: executorId(),
    });
    return pool.run({
      runId: run.runId,
      versionId: version.versionId,
      source: version.script,
      onEvent,
      payload: {
        input: run.input ?? null,
        messages: inv.messages,
        secrets: inv.secrets,
        metadata: run.metadata,
        env: version.env,
        params: inv.params ?? {},
        session_id: run.sessionId,
        run_id: run.runId,
        run_attempt: run.attempt,
        workflow: version.workflowRefName,
        version: version.version,
        version_id: version.versionId,
        token,
        rpc_url: options.rpcUrl(),
        limits: {
          memory_bytes: options.limits.memoryBytes,
          cpu_seconds: Math.ceil(run.timeoutMs / 1000) + 5,
          open_files: options.limits.openFiles,
          file_bytes: options.limits.fileBytes,
        },
      },
    });
  }

  /**
   * abandon ends an interrupted run that will not resume, saying why: its server restarted
   * (ServerRestarted), or its executor died and this one took over its runs (ExecutorLost). A run
   * resumed meanwhile (a later attempt) is left alone; a failure to record it is logged (the next
   * start tries again).
   */
  async function abandon(row: RunRow, why: string): Promise<void> {
    const lost = row.executor !== "" && row.executor !== executorId() && options.liveExecutors?.() !== undefined;
    const message = lost
      ? `its executor '${row.executor}' stopped while this run was in flight, and ${why}`
      : `the server stopped while this run was in flight, and ${why}`;
    await store
      .failRun(row.id, row.attempt, RunStatus.FAILED, { type: lost ? "ExecutorLost" : "ServerRestarted", message, traceback: "" })
      .catch((e: Error) => process.stderr.write(`could not record the end of run ${row.id}: ${e.message}\n`));
  }

  /**
   * recover takes over the runs a previous process left in flight: an async run without secrets is
   * resumed now; an async run with secrets fails (they were never stored); a run somebody waited for
   * waits for that caller to come back (an SDK retry, its Idempotency-Key, a rejoin) for its timeout,
   * and fails if nobody does.
   */
  async function recover(): Promise<void> {
    // A shared database holds the other executors' runs too: this one's are its own (the runs of
    // executors that died are taken over by takeOver).
    const rows = await store.runsInFlight(options.liveExecutors ? { executor: executorId() } : {});
    adopt(rows);
    if (rows.length > 0)
      process.stderr.write(`found ${rows.length} run(s) the last process left in flight: resuming or waiting for their callers\n`);
  }

  /**
   * takeOver adopts the runs of executors that died (recorded in flight on an executor that is not
   * live), as recover adopts a previous process's: the cluster calls it at each heartbeat, on every
   * live executor; each run is resumed by one of them (resumeRun claims it). It also stops the runs
   * of this executor that another took over while this one could not heartbeat: their record is not
   * this executor's any more.
   */
  async function takeOver(): Promise<void> {
    const liveIds = options.liveExecutors?.();
    if (!liveIds || closing || takingOver) return;
    takingOver = true;
    try {
      await takeOverFrom(liveIds);
    } finally {
      takingOver = false;
    }
  }
  async function takeOverFrom(liveIds: string[]): Promise<void> {
    // "" is the executor of a queued run nobody claimed yet: not an orphan, the queue's.
    const orphans = await store.runsInFlight({ except: [...new Set([...liveIds, executorId(), ""])] });
    const fresh = orphans.filter((r) => !waiting.has(r.id));
    adopt(fresh);
    if (fresh.length > 0) process.stderr.write(`taking over ${fresh.length} run(s) of executors that stopped\n`);
    for (const id of await store.notMine([...live.keys()], executorId())) {
      process.stderr.write(`run ${id} was taken over by another executor: stopping it here\n`);
      live.get(id)?.cancel("cancelled");
    }
  }

  /** adopt resumes, fails or waits for the callers of runs left in flight by a process that is gone. */
  function adopt(rows: RunRow[]): void {
    for (const row of rows) {
      // Callers are served while the records are read: one may have come back and resumed its run.
      if (live.has(row.id) || resuming.has(row.id)) continue;
      if (row.detached && row.hasSecrets) {
        void abandon(
          row,
          "it was given secrets, which are never stored, so it cannot resume on its own; run it again with its secrets (an async run has no caller to bring them back)",
        );
      } else if (row.detached) {
        resumeLater(row, 0);
      } else {
        const wait = Math.max(row.timeoutMs, disconnectGraceMs);
        const timer = setTimeout(() => {
          waiting.delete(row.id);
          if (!live.has(row.id)) void abandon(row, `its caller did not come back within ${Math.round(wait / 1000)}s to resume it`);
        }, wait);
        timer.unref();
        waiting.set(row.id, timer);
      }
    }
  }

  /** resumeLater resumes an async run on its own, trying again while the server is full. */
  function resumeLater(row: RunRow, delayMs: number): void {
    const timer = setTimeout(() => {
      waiting.delete(row.id);
      if (closing || live.has(row.id)) return;
      resume(row, undefined, undefined, { waited: false, callSeq: null, traceparent: null }).catch((e: unknown) => {
        const error = ConnectError.from(e);
        if (error.code === Code.ResourceExhausted || error.code === Code.Unavailable) return resumeLater(row, 1000);
        // Aborted: another executor resumed it first. NotFound: abandoned already.
        if (error.code !== Code.NotFound && error.code !== Code.Aborted) return abandon(row, `it could not resume: ${error.rawMessage}`);
      });
    }, delayMs);
    waiting.set(row.id, timer);
  }

  /** callerOf attaches a caller to a run for as long as its call lasts (ctx.signal): a caller that goes away detaches. */
  function callerOf(ctx: HandlerContext, run: LiveRun): () => void {
    const detach = run.attach();
    ctx.signal.addEventListener("abort", detach, { once: true });
    return () => {
      ctx.signal.removeEventListener("abort", detach);
      detach();
    };
  }

  function runMessage(row: RunRow, full: boolean): MessageInitShape<typeof RunSchema> {
    return {
      runId: row.id,
      accountId: row.accountId,
      workflowRefName: row.workflowRefName,
      version: row.version,
      sessionId: row.sessionId,
      status: row.status,
      input: toValue(row.input),
      metadata: (row.metadata ?? {}) as JsonObject,
      output: row.output === null ? undefined : toValue(row.output),
      error: row.error ?? undefined,
      createdAt: timestampOf(row.createdAt),
      startedAt: row.startedAt ? timestampOf(row.startedAt) : undefined,
      finishedAt: row.finishedAt ? timestampOf(row.finishedAt) : undefined,
      durationMs: row.durationMs ?? 0,
      warnings: row.warnings ?? [],
      parentRunId: row.parentRunId,
      depth: row.depth,
      usage: {
        promptTokens: row.promptTokens,
        completionTokens: row.completionTokens,
        totalTokens: row.promptTokens + row.completionTokens,
      },
      runAttempt: row.attempt,
      attempts: (
        row.attempts ?? [{ attempt: 1, startedAt: row.startedAt ?? row.createdAt, endedAt: row.finishedAt ?? 0, interrupted: false }]
      )
        .filter((a) => a.endedAt > 0 || row.attempts)
        .map((a) => ({
          attempt: a.attempt,
          startedAt: timestampOf(a.startedAt),
          endedAt: a.endedAt ? timestampOf(a.endedAt) : undefined,
          interrupted: a.interrupted,
        })),
      unjournaledCalls: row.unjournaledCalls,
      executor: row.executor,
      ...(full
        ? {
            emitted: (row.emitted ?? []).map((e) => ({ seq: e.seq, value: toValue(e.value), time: timestampOf(e.time) })),
            logs: (row.logs ?? []).map((l) => ({
              level: l.level,
              message: l.message,
              fields: l.fields as JsonObject,
              time: timestampOf(l.time),
              source: l.source,
            })),
            httpCalls: (row.httpCalls ?? []).map((h) => ({ ...h, time: timestampOf(h.time) })),
          }
        : {}),
    } as MessageInitShape<typeof RunSchema>;
  }

  /** startedOf is the started message of an ended run, as its first caller got it. */
  function startedOf(row: RunRow): RunStarted {
    return {
      $typeName: "shaker.executor.v1.RunStarted",
      runId: row.id,
      sessionId: row.sessionId,
      workflowRefName: row.workflowRefName,
      version: row.version,
      detached: row.detached === 1,
      createdAt: timestampOf(row.createdAt),
      attempt: row.attempt,
    };
  }

  /**
   * recordedEvents are an ended run's emitted values and log lines from its record, after a cursor,
   * in time order, then its result; a failed run's error is thrown after them, as its stream did.
   */
  function* recordedEvents(row: RunRow, after: Cursor): Generator<StreamEvent> {
    const emitted = (row.emitted ?? []).map((e, i) => ({ time: e.time, kind: "emitted" as const, i, e }));
    const logs = (row.logs ?? []).map((l, i) => ({ time: l.time, kind: "log" as const, i, l }));
    const all = [...emitted, ...logs].sort((a, b) => a.time - b.time);
    const at = { emitted: 0, logs: 0 };
    for (const item of all) {
      if (item.kind === "emitted") {
        at.emitted = item.i + 1;
        if (item.i < after.emitted) continue;
        const { seq, value, time } = item.e;
        yield {
          eventId: cursorId(at),
          event: { case: "emitted", value: { seq, value: toValue(value), time: timestampOf(time) } as never },
        };
      } else {
        at.logs = item.i + 1;
        if (item.i < after.logs) continue;
        const { level, message, fields, time, source } = item.l;
        yield {
          eventId: cursorId(at),
          event: { case: "log", value: { level, message, fields: fields as JsonObject, time: timestampOf(time), source } as never },
        };
      }
    }
    if (row.status !== RunStatus.SUCCEEDED) {
      const failure = failureOf(row.status, row.error ?? { type: "Error", message: "the run failed", traceback: "" });
      failure.metadata.set("shaker-run-id", row.id);
      throw failure;
    }
    yield { event: { case: "result", value: resultOf(row) } };
  }

  /** resultOf is the RunResult of a run that succeeded, from its record. */
  function resultOf(row: RunRow): RunResult {
    return {
      $typeName: "shaker.executor.v1.RunResult",
      runId: row.id,
      sessionId: row.sessionId,
      output: toValue(row.output),
      usage: {
        $typeName: "shaker.executor.v1.Usage",
        promptTokens: row.promptTokens,
        completionTokens: row.completionTokens,
        totalTokens: row.promptTokens + row.completionTokens,
      },
      warnings: row.warnings ?? [],
      durationMs: row.durationMs ?? 0,
    };
  }

  /** watch is every event of a target after a cursor, to its end: live (attached while it lasts) or from its record. */
  async function* watch(ctx: HandlerContext, target: Target, after: Cursor): AsyncGenerator<StreamEvent> {
    if (!target.live) {
      yield* recordedEvents(target.row, after);
      return;
    }
    const detach = callerOf(ctx, target.live);
    const listener = target.live.events.listen(after);
    try {
      yield* listener.events;
    } finally {
      listener.stop();
      detach();
    }
  }

  /** finishedOf is how a target ends: its result, or its error thrown. */
  async function finishedOf(ctx: HandlerContext, target: Target): Promise<RunResult> {
    if (!target.live) {
      if (target.row.status === RunStatus.SUCCEEDED) return resultOf(target.row);
      const failure = failureOf(target.row.status, target.row.error ?? { type: "Error", message: "the run failed", traceback: "" });
      failure.metadata.set("shaker-run-id", target.row.id);
      throw failure;
    }
    const detach = callerOf(ctx, target.live);
    try {
      return await target.live.finished;
    } finally {
      detach();
    }
  }

  const startedFrom = (target: Target): RunStarted => (target.live ? target.live.started : startedOf(target.row));

  const impl: ServiceImpl<typeof ExecutorService> = {
    async run(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      const target = await start(identity, req.invocation ?? create(InvocationSchema), {
        waited: true,
        callSeq: ctx.requestHeader.get(callSeqHeader),
        traceparent: ctx.requestHeader.get(traceHeader),
      });
      return { result: await finishedOf(ctx, target) };
    },

    async *runStream(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      const inv = req.invocation ?? create(InvocationSchema);
      const target = await start(identity, inv, {
        waited: true,
        callSeq: null,
        traceparent: ctx.requestHeader.get(traceHeader),
        queue: true,
      });
      const started = startedFrom(target);
      yield { event: { case: "started", value: started } };
      if (started.detached) return;
      yield* watch(ctx, target, cursorStart);
    },

    async startRun(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      const target = await start(identity, req.invocation ?? create(InvocationSchema), {
        waited: false,
        callSeq: null,
        traceparent: ctx.requestHeader.get(traceHeader),
        queue: true,
      });
      return { started: startedFrom(target) };
    },

    async *watchRun(req, ctx) {
      const accountId = recordsReader(await auth.identify(ctx.requestHeader));
      const after = parseCursor(req.after);
      const running = live.get(req.runId);
      let target: Target;
      if (running && running.accountId === accountId) target = { live: running };
      else {
        const row = await store.run(accountId, text(req.runId, "run_id"));
        if (!row) throw new ConnectError(`run '${req.runId}' not found`, Code.NotFound);
        // Interrupted: watching it resumes it, when it can resume without its caller.
        target =
          row.status === RunStatus.RUNNING || row.status === RunStatus.QUEUED
            ? {
                live: await resume(row, undefined, undefined, {
                  waited: true,
                  callSeq: null,
                  traceparent: ctx.requestHeader.get(traceHeader),
                }),
              }
            : { row };
      }
      for await (const update of watch(ctx, target, after)) yield { update };
    },

    async getRun(req, ctx) {
      const accountId = recordsReader(await auth.identify(ctx.requestHeader));
      const row = await store.run(accountId, text(req.runId, "run_id"));
      if (!row) throw new ConnectError(`run '${req.runId}' not found`, Code.NotFound);
      return { run: runMessage(row, true) };
    },

    async listRuns(req, ctx) {
      const accountId = recordsReader(await auth.identify(ctx.requestHeader));
      const limit = checkRunPage(req.offset, req.limit);
      const rows = await store.listRuns({
        accountId,
        workflowRefName: text(req.workflowRefName, "workflow") || undefined,
        sessionId: text(req.sessionId, "session_id") || undefined,
        status: req.status || undefined,
        offset: req.offset,
        limit,
      });
      return { runs: rows.map((r) => runMessage(r, false)) };
    },

    async cancelRun(req, ctx) {
      const accountId = recordsReader(await auth.identify(ctx.requestHeader));
      const run = live.get(req.runId);
      if (run && run.accountId === accountId) {
        run.cancel("cancelled");
        return { cancelled: true };
      }
      const row = await store.run(accountId, text(req.runId, "run_id"));
      if (!row) throw new ConnectError(`run '${req.runId}' not found`, Code.NotFound);
      if (row.status === RunStatus.RUNNING || row.status === RunStatus.QUEUED) {
        // Interrupted, waiting for its caller: cancelled without ever resuming.
        clearTimeout(waiting.get(row.id));
        waiting.delete(row.id);
        await store.failRun(row.id, row.attempt, RunStatus.CANCELLED, {
          type: "Cancelled",
          message: "the run was cancelled",
          traceback: "",
        });
        return { cancelled: true };
      }
      return { cancelled: false };
    },

    async checkRun(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      if (identity.kind !== "service") throw new ConnectError("CheckRun is for the services only", Code.PermissionDenied);
      return { live: live.has(req.runId) };
    },

    async fetch(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      if (identity.kind !== "run") {
        throw new ConnectError("Fetch makes a workflow run's ctx.http requests: only a run's token may call it", Code.PermissionDenied);
      }
      const run = live.get(identity.claims.run);
      if (!run) throw new ConnectError("the run this token was given to has ended", Code.Unauthenticated);
      // The request joins the run's trace, unless the workflow set its own traceparent.
      const traceparent = ctx.requestHeader.get(traceHeader);
      if (traceparent && !Object.keys(req.headers).some((h) => h.toLowerCase() === traceHeader)) req.headers[traceHeader] = traceparent;
      return await run.fetch(req, ctx.signal);
    },
  };

  return {
    impl,
    live,
    /** journalInterceptor journals the ctx calls of runs, on the socket runs call the services through. */
    journalInterceptor: createJournalInterceptor({ store, auth, runJournal: (runId) => live.get(runId)?.journal }),
    /** callTracer makes runs' ctx calls spans of their runs' traces; put it in front of the journal. */
    callTracer: createCallTracer({ telemetry, auth, runSpan: (runId) => live.get(runId)?.span }),
    /** recover takes over the runs a previous process left in flight: call it once the services are served. */
    recover,
    takeOver,
    /** routes serves the Executor on a router. */
    routes(router: ConnectRouter): void {
      router.service(ExecutorService, impl);
    },
    /**
     * close stops resuming runs: those still in flight when their processes go stay recorded as in
     * flight, for the next start. Call it before the worker pool closes.
     */
    close(): void {
      closing = true;
      clearInterval(claimTimer);
      for (const timer of waiting.values()) clearTimeout(timer);
      waiting.clear();
    },
  };
}
