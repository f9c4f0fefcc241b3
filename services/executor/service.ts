import type { JsonObject, JsonValue, MessageInitShape } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  type ExecutorService,
  type FetchRequest,
  type Invocation,
  type RunResult,
  type RunSchema,
  type RunStarted,
  RunStatus,
} from "../../gen/shaker/executor/v1/executor_pb.js";
import { ExecutionMode, type RegistryService, type WorkflowVersion } from "../../gen/shaker/registry/v1/registry_pb.js";
import { type Auth, type Identity, requireAccount } from "../shared/auth.js";
import { invalidArgument } from "../shared/errors.js";
import { newId } from "../shared/ids.js";
import { fromValue, timestampOf, toValue } from "../shared/json.js";
import { AsyncQueue } from "../shared/queue.js";
import { createRunRedactor, redactJson } from "../shared/redact.js";
import { type AdmissionOptions, type Caller, createAdmission } from "./admission.js";
import { defaultTimeoutMs, type EgressOptions, egressFetch, type FetchOutput, type Hop, parseAllowList } from "./egress.js";
import { createFrameTranslator, emittedMessage, type Frame, logMessage, runResult, type StreamEvent, weightOf } from "./events.js";
import { classifyExit, type EndedBy } from "./exits.js";
import { checkAgainstSchema, type FieldSchema } from "./input-schema.js";
import type { RunHandle, WorkerEvent, WorkerPool } from "./pool.js";
import { createRunRecorder } from "./recorder.js";
import { checkRunPage, inputRequired } from "./rules.js";
import type { ExecutorStore, RunRow } from "./store.js";

/** Options of createExecutorService. */
export interface ExecutorServiceOptions extends AdmissionOptions {
  store: ExecutorStore;
  pool: WorkerPool;
  auth: Auth;
  registry: Client<typeof RegistryService>;
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
}

/** A run keeps the first this many HTTP requests on its record. */
const maxHttpCalls = 1000;
/** A run may have this many ctx.http requests in flight at once. */
const maxHttpInFlight = 16;

/** A streaming run whose listener has this many bytes of messages unread is paused, until it reads down to the low mark. */
const streamHighWaterBytes = 1024 * 1024;
const streamLowWaterBytes = 256 * 1024;

/** LiveRun is a run in flight: its events and how it ends. */
interface LiveRun {
  started: RunStarted;
  accountId: string;
  /** events receives the stream's messages; only when somebody listens. */
  events: AsyncQueue<StreamEvent> | undefined;
  cancel(reason: "cancelled" | "disconnected"): void;
  finished: Promise<RunResult>;
  /** secretValues are the run's secret values and those of the runs it nests in: none is ever recorded. */
  secretValues: string[];
  /** fetch makes one ctx.http request for the run and records it on the run. */
  fetch(req: FetchRequest, signal: AbortSignal): Promise<FetchOutput>;
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

/** recordsReader returns the account of a caller that may read and cancel run records: not a run's token. */
function recordsReader(identity: Identity): string {
  if (identity.kind === "run") throw new ConnectError("a workflow run may not read or cancel run records", Code.PermissionDenied);
  return requireAccount(identity);
}

const invalid = invalidArgument;

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

/** createExecutorService builds the Executor's handlers over its store and worker pool. */
export function createExecutorService(options: ExecutorServiceOptions): {
  impl: ServiceImpl<typeof ExecutorService>;
  live: Map<string, LiveRun>;
} {
  const { store, pool, auth, registry } = options;
  const recordLimits = { maxLogLines: options.maxLogLines ?? 1000, maxEmittedBytes: options.maxEmittedBytes ?? 1024 * 1024, maxHttpCalls };
  const live = new Map<string, LiveRun>();
  const admission = createAdmission(options);
  const egress = { allow: parseAllowList(options.httpAllow ?? []), maxResponseBytes: options.httpMaxResponseBytes };

  const failed = store.failRunsInFlight([RunStatus.QUEUED, RunStatus.RUNNING], RunStatus.FAILED, {
    type: "ServerRestarted",
    message: "the server stopped while this run was in flight",
    traceback: "",
  });
  if (failed > 0) process.stderr.write(`marked ${failed} run(s) left in flight by the last process as failed\n`);

  async function resolve(identity: Identity, inv: Invocation): Promise<WorkflowVersion> {
    const accountId = requireAccount(identity);
    if (!inv.workflowRefName) throw invalid("workflow_ref_name is required", "model");
    const { version } = await registry.resolveWorkflow(
      { workflowRefName: inv.workflowRefName, version: inv.version },
      { headers: auth.serviceHeaders(accountId) },
    );
    if (!version) throw new ConnectError("workflow not found", Code.NotFound);
    return version;
  }

  /**
   * start checks everything that can be checked before a process exists (so every such error is
   * the caller's, before any stream message), records the run and hands it to the pool.
   */
  async function start(identity: Identity, inv: Invocation, listen: boolean): Promise<LiveRun> {
    const caller = admission.check(identity);
    const version = await resolve(identity, inv);
    const input = inputOf(inv, version, caller.parent !== undefined);
    // A nested run's record is kept clean of its ancestors' secrets too: a parent passes them on in
    // input, messages or metadata (the nested run itself still receives them).
    const parentRun = caller.parent ? live.get(caller.parent.run) : undefined;
    if (caller.parent && !parentRun) throw new ConnectError("the run this token was given to has ended", Code.Unauthenticated);
    const secretValues = [...Object.values(inv.secrets), ...(parentRun?.secretValues ?? [])];
    const release = admission.admit(caller.accountId);
    try {
      return launch({ caller, inv, version, input, secretValues, release }, listen);
    } catch (e) {
      release();
      throw e;
    }
  }

  /** launch records an admitted run, hands it to the pool and follows it to its end. */
  function launch(admitted: Admitted, listen: boolean): LiveRun {
    const { caller, inv, version } = admitted;
    const createdAt = Date.now();
    const run: RunPlan = {
      ...admitted,
      runId: newId("run"),
      sessionId: inv.sessionId || caller.parent?.session || newId("sess"),
      createdAt,
      timeoutMs: Math.max(1, version.timeoutSeconds) * 1000,
      metadata: (inv.metadata ?? {}) as JsonObject,
    };
    const { runId, sessionId } = run;
    const redact = createRunRedactor(run.secretValues);
    const recorder = createRunRecorder(redact, recordLimits);
    const frames = createFrameTranslator();
    const fetcher = runFetcher(createdAt + run.timeoutMs, egress, recorder.http);
    const started: RunStarted = {
      $typeName: "shaker.executor.v1.RunStarted",
      runId,
      sessionId,
      workflowRefName: version.workflowRefName,
      version: version.version,
      detached: version.executionMode === ExecutionMode.ASYNC && !listenOverride(inv),
    };
    // A slow listener holds the run back: past the high mark its child is paused (it blocks in
    // ctx.emit once its pipe is full), and resumed when the listener has read down to the low mark.
    const events =
      listen && !started.detached
        ? new AsyncQueue<StreamEvent>({
            highWaterMark: streamHighWaterBytes,
            lowWaterMark: streamLowWaterBytes,
            weigh: weightOf,
            onHigh: () => handle.pause(),
            onLow: () => handle.resume(),
          })
        : undefined;
    const finished = deferred<RunResult>();
    let endedBy: EndedBy | undefined;

    function onEvent(event: WorkerEvent, bytes: number): void {
      for (const line of frames.logs(event)) {
        // Recorded whether or not anybody listens (async and nested runs have no listener).
        const recorded = recorder.log(line);
        events?.push(logMessage(recorded));
      }
      if (event.t === "emit") {
        recorder.emitted(event, bytes);
        events?.push(emittedMessage(event, bytes));
      } else if (event.t === "result") recorder.returned(event);
      else if (event.t === "error") recorder.raised(event);
      else if (event.t === "exit") finish(event);
    }

    function finish(exit: Frame<"exit">): void {
      clearTimeout(timer);
      live.delete(runId);
      run.release();
      fetcher.end();
      const finishedAt = Date.now();
      const durationMs = finishedAt - createdAt;
      const returned = recorder.result;
      const end = { endedBy, returned: returned !== undefined, error: recorder.error, exit, timeoutSeconds: version.timeoutSeconds };
      const { status, error, failure } = classifyExit(end);
      const warnings = recorder.warnings(status === RunStatus.SUCCEEDED ? outputWarnings(returned!.output, version) : []);
      store.finishRun(runId, recorder.fields({ status, error, warnings, finishedAt, durationMs }));
      if (failure) {
        failure.metadata.set("shaker-run-id", runId);
        events?.fail(failure);
        finished.reject(failure);
        return;
      }
      const result = runResult(run, returned!, warnings, durationMs);
      events?.push({ event: { case: "result", value: result } });
      events?.end();
      finished.resolve(result);
    }

    recordStart(run, redact);
    const handle = handOver(run, onEvent);
    const end = (reason: EndedBy) => {
      endedBy ??= reason;
      handle.kill();
    };
    const timer = setTimeout(() => end("timeout"), run.timeoutMs);
    const { accountId } = caller;
    const { secretValues } = run;
    const liveRun: LiveRun = { started, accountId, events, finished: finished.promise, secretValues, fetch: fetcher.fetch, cancel: end };
    live.set(runId, liveRun);
    return liveRun;
  }

  /**
   * recordStart queues the run's row before the run exists, so it is written before its end (in the
   * same transaction or an earlier one), and while its child starts rather than before.
   */
  function recordStart(run: RunPlan, redact: (text: string) => string): void {
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
    });
  }

  /** handOver mints the run's token and gives the run to the pool, with all its ctx is built from. */
  function handOver(run: RunPlan, onEvent: (event: WorkerEvent, bytes: number) => void): RunHandle {
    const { caller, inv, version } = run;
    const token = auth.mintRunToken({
      account: caller.accountId,
      workflow: version.workflowRefName,
      version: version.version,
      versionId: version.versionId,
      run: run.runId,
      session: run.sessionId,
      datastores: version.datastores.map((d) => ({ name: d.name, write: d.write })),
      depth: caller.depth,
      exp: run.createdAt + run.timeoutMs + 60_000,
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

  function onAbort(ctx: HandlerContext, run: LiveRun): () => void {
    const abort = () => run.cancel("disconnected");
    ctx.signal.addEventListener("abort", abort, { once: true });
    return () => ctx.signal.removeEventListener("abort", abort);
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

  const impl: ServiceImpl<typeof ExecutorService> = {
    async run(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      const run = await start(identity, req.invocation ?? ({} as Invocation), false);
      const detach = onAbort(ctx, run);
      try {
        return { result: await run.finished };
      } finally {
        detach();
      }
    },

    async *runStream(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      const run = await start(identity, req.invocation ?? ({} as Invocation), true);
      const detach = run.started.detached ? () => {} : onAbort(ctx, run);
      try {
        yield { event: { case: "started", value: run.started } };
        if (run.started.detached) return;
        for await (const event of run.events!) yield event;
      } finally {
        detach();
        // A consumer that stops early (a disconnected client) must not leave the process running.
        if (!run.started.detached && live.has(run.started.runId)) run.cancel("disconnected");
      }
    },

    async startRun(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      const run = await start(identity, req.invocation ?? ({} as Invocation), false);
      return { started: run.started };
    },

    async getRun(req, ctx) {
      const accountId = recordsReader(await auth.identify(ctx.requestHeader));
      const row = store.run(accountId, req.runId);
      if (!row) throw new ConnectError(`run '${req.runId}' not found`, Code.NotFound);
      return { run: runMessage(row, true) };
    },

    async listRuns(req, ctx) {
      const accountId = recordsReader(await auth.identify(ctx.requestHeader));
      const limit = checkRunPage(req.offset, req.limit);
      const rows = store.listRuns({
        accountId,
        workflowRefName: req.workflowRefName || undefined,
        sessionId: req.sessionId || undefined,
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
      if (!store.run(accountId, req.runId)) throw new ConnectError(`run '${req.runId}' not found`, Code.NotFound);
      return { cancelled: false };
    },

    async fetch(req, ctx) {
      const identity = await auth.identify(ctx.requestHeader);
      if (identity.kind !== "run") {
        throw new ConnectError("Fetch makes a workflow run's ctx.http requests: only a run's token may call it", Code.PermissionDenied);
      }
      const run = live.get(identity.claims.run);
      if (!run) throw new ConnectError("the run this token was given to has ended", Code.Unauthenticated);
      return await run.fetch(req, ctx.signal);
    },
  };
  return { impl, live };
}
