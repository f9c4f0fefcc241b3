import { invalidArgument } from "../shared/errors.js";
import type { JsonObject, JsonValue, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  ExecutorService,
  LogLevel,
  RunStatus,
  type FetchRequest,
  type Invocation,
  type RunResult,
  type RunSchema,
  type RunStarted,
  type RunStreamResponseSchema,
} from "../../gen/shaker/executor/v1/executor_pb.js";
import { ExecutionMode, type RegistryService, type WorkflowVersion } from "../../gen/shaker/registry/v1/registry_pb.js";
import { requireAccount, type Auth, type Identity } from "../shared/auth.js";
import { newId } from "../shared/ids.js";
import { fromValue, timestampOf, toValue } from "../shared/json.js";
import { AsyncQueue } from "../shared/queue.js";
import { createRunRedactor, redactJson } from "../shared/redact.js";
import { defaultTimeoutMs, egressFetch, parseAllowList, type FetchOutput } from "./egress.js";
import { checkAgainstSchema, type FieldSchema } from "./input-schema.js";
import type { WorkerEvent, WorkerPool } from "./pool.js";
import type { ExecutorStore, RunRow } from "./store.js";

type StreamEvent = MessageInitShape<typeof RunStreamResponseSchema>;


/** Options of createExecutorService. */
export interface ExecutorServiceOptions {
  store: ExecutorStore;
  pool: WorkerPool;
  auth: Auth;
  registry: Client<typeof RegistryService>;
  /** rpcUrl is the address children call the services at, as they see it. */
  rpcUrl: () => string;
  /**
   * unconfinedRunsForAdminsOnly, when set, says why this host cannot confine runs: runs of accounts
   * other than admins' are then refused (FailedPrecondition), since they could read everybody's data.
   */
  unconfinedRunsForAdminsOnly?: string;
  maxConcurrentRuns: number;
  maxConcurrentRunsPerAccount: number;
  maxNestingDepth: number;
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

const levelByName: Record<string, LogLevel> = {
  LOG_LEVEL_DEBUG: LogLevel.DEBUG,
  LOG_LEVEL_INFO: LogLevel.INFO,
  LOG_LEVEL_WARNING: LogLevel.WARNING,
  LOG_LEVEL_ERROR: LogLevel.ERROR,
};

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

/** createExecutorService builds the Executor's handlers over its store and worker pool. */
export function createExecutorService(options: ExecutorServiceOptions): {
  impl: ServiceImpl<typeof ExecutorService>;
  live: Map<string, LiveRun>;
} {
  const { store, pool, auth, registry } = options;
  const maxLogLines = options.maxLogLines ?? 1000;
  const maxEmittedBytes = options.maxEmittedBytes ?? 1024 * 1024;
  const live = new Map<string, LiveRun>();
  const perAccount = new Map<string, number>();
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

  function admit(accountId: string): () => void {
    if (live.size >= options.maxConcurrentRuns) {
      throw new ConnectError(`the server runs ${options.maxConcurrentRuns} runs already; try again shortly`, Code.ResourceExhausted);
    }
    const mine = perAccount.get(accountId) ?? 0;
    if (mine >= options.maxConcurrentRunsPerAccount) {
      throw new ConnectError(
        `this account's concurrency limit (${options.maxConcurrentRunsPerAccount} runs) is reached; try again shortly`,
        Code.ResourceExhausted,
      );
    }
    perAccount.set(accountId, mine + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (perAccount.get(accountId) ?? 1) - 1;
      if (n <= 0) perAccount.delete(accountId);
      else perAccount.set(accountId, n);
    };
  }

  /**
   * start checks everything that can be checked before a process exists (so every such error is
   * the caller's, before any stream message), records the run and hands it to the pool.
   */
  async function start(identity: Identity, inv: Invocation, listen: boolean): Promise<LiveRun> {
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
    const version = await resolve(identity, inv);
    const input: JsonValue | undefined = inv.hasInput || inv.input ? fromValue(inv.input) : undefined;
    if (!inv.hasInput && !inv.input && inv.messages.length === 0 && !parent) {
      throw invalid("either 'messages' or 'input' is required", "messages");
    }
    const problem = checkAgainstSchema("input", input ?? null, version.inputSchema as Record<string, FieldSchema> | undefined);
    if (problem) throw invalid(problem.message, problem.param);
    // A nested run's record is kept clean of its ancestors' secrets too: a parent passes them on in
    // input, messages or metadata (the nested run itself still receives them).
    const parentRun = parent ? live.get(parent.run) : undefined;
    if (parent && !parentRun) throw new ConnectError("the run this token was given to has ended", Code.Unauthenticated);
    const secretValues = [...Object.values(inv.secrets), ...(parentRun?.secretValues ?? [])];
    const release = admit(accountId);

    const runId = newId("run");
    const sessionId = inv.sessionId || parent?.session || newId("sess");
    const createdAt = Date.now();
    const redact = createRunRedactor(secretValues);
    const timeoutMs = Math.max(1, version.timeoutSeconds) * 1000;
    const started: RunStarted = {
      $typeName: "shaker.executor.v1.RunStarted",
      runId,
      sessionId,
      workflowRefName: version.workflowRefName,
      version: version.version,
      detached: version.executionMode === ExecutionMode.ASYNC && !listenOverride(inv),
    };
    const metadata = (inv.metadata ?? {}) as JsonObject;

    // A slow listener holds the run back: past the high mark its child is paused (it blocks in
    // ctx.emit once its pipe is full), and resumed when the listener has read down to the low mark.
    const eventBytes = new WeakMap<StreamEvent, number>();
    const events =
      listen && !started.detached
        ? new AsyncQueue<StreamEvent>({
            highWaterMark: streamHighWaterBytes,
            lowWaterMark: streamLowWaterBytes,
            weigh: (e) => eventBytes.get(e) ?? 256,
            onHigh: () => handle.pause(),
            onLow: () => handle.resume(),
          })
        : undefined;
    const emitted: { seq: number; value: unknown; time: number }[] = [];
    let emittedBytes = 0;
    let emittedDropped = 0;
    const logs: { level: number; message: string; fields: Record<string, unknown>; time: number; source: string }[] = [];
    let logsDropped = 0;
    const httpCalls: { method: string; host: string; status: number; durationMs: number; error: string; time: number }[] = [];
    let httpDropped = 0;
    let httpInFlight = 0;
    /** httpEnded aborts the run's requests in flight when it ends. */
    const httpEnded = new AbortController();
    let result: { output: unknown; usage: { prompt_tokens: number; completion_tokens: number } } | undefined;
    let error: { type: string; message: string; traceback: string } | undefined;
    let endedBy: "timeout" | "cancelled" | "disconnected" | undefined;
    let outputTruncated = false;

    function addLog(level: LogLevel, message: string, fields: Record<string, unknown>, time: number, source: string) {
      const entry = { level, message: redact(message), fields: redactJson(fields, redact), time, source };
      if (logs.length < maxLogLines) logs.push(entry);
      else logsDropped++;
      events?.push({
        event: {
          case: "log",
          value: {
            level,
            message: entry.message,
            fields: entry.fields as JsonObject,
            time: timestampOf(time),
            source,
          } as never,
        },
      });
    }

    /**
     * fetchForRun is ctx.http: the run has no network, so the Executor makes the request, within the
     * run's remaining time, and records every hop (host without user-info, errors without secrets).
     */
    async function fetchForRun(req: FetchRequest, signal: AbortSignal): Promise<FetchOutput> {
      if (!(req.timeoutSeconds >= 0)) throw invalid("timeout_seconds must be 0 or more", "timeout_seconds");
      const remaining = createdAt + timeoutMs - Date.now();
      if (remaining <= 0) throw new ConnectError("the run has no time left for an HTTP request", Code.DeadlineExceeded);
      if (httpInFlight >= maxHttpInFlight) {
        throw new ConnectError(`a run may have at most ${maxHttpInFlight} HTTP requests in flight`, Code.ResourceExhausted);
      }
      const aborted = new AbortController();
      const abort = () => aborted.abort();
      signal.addEventListener("abort", abort, { once: true });
      httpEnded.signal.addEventListener("abort", abort, { once: true });
      if (signal.aborted || httpEnded.signal.aborted) abort();
      httpInFlight++;
      try {
        const asked = req.timeoutSeconds > 0 ? req.timeoutSeconds * 1000 : defaultTimeoutMs;
        return await egressFetch(
          { method: req.method, url: req.url, headers: req.headers, body: req.body, timeoutMs: Math.min(asked, remaining), signal: aborted.signal },
          egress,
          (hop) => {
            if (httpCalls.length >= maxHttpCalls) return void httpDropped++;
            httpCalls.push({ ...hop, method: redact(hop.method), host: redact(hop.host), error: redact(hop.error) });
          },
        );
      } finally {
        httpInFlight--;
        signal.removeEventListener("abort", abort);
        httpEnded.signal.removeEventListener("abort", abort);
      }
    }

    let settle!: (r: RunResult) => void;
    let reject!: (e: ConnectError) => void;
    const finished = new Promise<RunResult>((res, rej) => {
      settle = res;
      reject = rej;
    });
    finished.catch(() => {});
    const partial: Record<string, string> = { stdout: "", stderr: "" };

    function onEvent(event: WorkerEvent, bytes: number): void {
      switch (event.t) {
        case "emit": {
          // A run may emit without end (a long stream of tokens): the record keeps the first ones.
          emittedBytes += bytes;
          if (emittedBytes <= maxEmittedBytes) emitted.push({ seq: event.seq, value: redactJson(event.value, redact), time: event.time * 1000 });
          else emittedDropped++;
          const message: StreamEvent = {
            event: {
              case: "emitted",
              value: { seq: event.seq, value: toValue(event.value), time: timestampOf(event.time * 1000) } as never,
            },
          };
          // Its frame's size, plus what a message costs anyway, is its weight in the queue.
          eventBytes.set(message, bytes + 256);
          events?.push(message);
          break;
        }
        case "log":
          addLog(levelByName[event.level] ?? LogLevel.INFO, event.message, event.fields ?? {}, event.time * 1000, "ctx");
          break;
        case "output": {
          // Captured output arrives in arbitrary chunks: log whole lines, keep the rest for later.
          const text = partial[event.stream] + event.data;
          const lines = text.split("\n");
          partial[event.stream] = lines.pop() ?? "";
          const level = event.stream === "stderr" ? LogLevel.ERROR : LogLevel.INFO;
          for (const line of lines) addLog(level, line, {}, Date.now(), event.stream);
          break;
        }
        case "result":
          result = event;
          break;
        case "error":
          error = { type: redact(event.type), message: redact(event.message), traceback: redact(event.traceback) };
          break;
        case "exit":
          outputTruncated = event.output_truncated;
          for (const stream of ["stdout", "stderr"] as const) {
            if (partial[stream]) addLog(stream === "stderr" ? LogLevel.ERROR : LogLevel.INFO, partial[stream], {}, Date.now(), stream);
          }
          finish(event);
          break;
        case "started":
          break;
      }
    }

    function finish(exit: { code: number; signal: number; memory_exceeded?: boolean }): void {
      clearTimeout(timer);
      live.delete(runId);
      release();
      httpEnded.abort();
      const finishedAt = Date.now();
      const durationMs = finishedAt - createdAt;
      let status: RunStatus;
      let failure: ConnectError | undefined;
      if (endedBy === "timeout") {
        status = RunStatus.TIMED_OUT;
        error = { type: "TimeoutError", message: `the run exceeded its timeout of ${version.timeoutSeconds}s and was killed`, traceback: "" };
        failure = new ConnectError(error.message, Code.DeadlineExceeded);
      } else if (endedBy) {
        status = RunStatus.CANCELLED;
        error = { type: "Cancelled", message: endedBy === "cancelled" ? "the run was cancelled" : "the caller disconnected", traceback: "" };
        failure = new ConnectError(error.message, Code.Canceled);
      } else if (result && exit.code === 0) {
        status = RunStatus.SUCCEEDED;
      } else {
        status = RunStatus.FAILED;
        if (!error) {
          const why = outputTruncated
            ? "it wrote more output than the limit and was killed"
            : exit.memory_exceeded
              ? "it used more memory than the run's limit (its processes and its /tmp together) and was killed"
              : exit.signal
              ? `its process was killed by signal ${exit.signal}${exit.signal === 9 ? " (SIGKILL: memory or CPU limit, or killed from outside)" : exit.signal === 11 ? " (SIGSEGV: segmentation fault)" : ""}`
              : `its process exited with code ${exit.code} before returning`;
          error = { type: "ProcessCrashed", message: `the workflow did not finish: ${why}`, traceback: "" };
        }
        failure = new ConnectError(`${error.type}: ${error.message}`, Code.Unknown);
      }
      const warnings: string[] = [];
      if (status === RunStatus.SUCCEEDED) {
        const problem = checkAgainstSchema("output", result!.output ?? null, version.outputSchema as Record<string, FieldSchema> | undefined);
        if (problem) warnings.push(`OUTPUT_SCHEMA: ${problem.message}`);
      }
      if (logsDropped > 0) warnings.push(`${logsDropped} log lines beyond the first ${maxLogLines} were dropped`);
      if (httpDropped > 0) warnings.push(`${httpDropped} HTTP requests beyond the first ${maxHttpCalls} were not kept on the run record`);
      if (emittedDropped > 0) {
        warnings.push(`${emittedDropped} emitted values beyond the first ${maxEmittedBytes} bytes were not kept on the run record (the stream carried them all)`);
      }
      const usage = {
        promptTokens: result?.usage?.prompt_tokens ?? 0,
        completionTokens: result?.usage?.completion_tokens ?? 0,
      };
      store.finishRun(runId, {
        status,
        output: status === RunStatus.SUCCEEDED ? redactJson(result!.output ?? null, redact) : null,
        error: error ?? null,
        finishedAt,
        durationMs,
        emitted,
        logs,
        httpCalls,
        warnings: warnings.map(redact),
        ...usage,
      });
      if (failure) {
        failure.metadata.set("shaker-run-id", runId);
        events?.fail(failure);
        reject(failure);
        return;
      }
      const runResult: RunResult = {
        $typeName: "shaker.executor.v1.RunResult",
        runId,
        sessionId,
        output: toValue(result!.output),
        usage: {
          $typeName: "shaker.executor.v1.Usage",
          ...usage,
          totalTokens: usage.promptTokens + usage.completionTokens,
        },
        warnings,
        durationMs,
      };
      events?.push({ event: { case: "result", value: runResult } });
      events?.end();
      settle(runResult);
    }

    // Queued before the run exists, so its row is written before its end (in the same transaction
    // or an earlier one), and while its child starts rather than before.
    store.insertRun({
      id: runId,
      accountId,
      workflowRefName: version.workflowRefName,
      version: version.version,
      versionId: version.versionId,
      sessionId,
      status: RunStatus.RUNNING,
      input: redactJson(input ?? null, redact),
      metadata: redactJson(metadata, redact),
      createdAt,
      startedAt: createdAt,
      parentRunId: parent?.run ?? "",
      depth,
    });
    const claims = {
      account: accountId,
      workflow: version.workflowRefName,
      version: version.version,
      versionId: version.versionId,
      run: runId,
      session: sessionId,
      datastores: version.datastores.map((d) => ({ name: d.name, write: d.write })),
      depth,
      exp: createdAt + timeoutMs + 60_000,
    };
    const handle = pool.run({
      runId,
      versionId: version.versionId,
      source: version.script,
      onEvent,
      payload: {
        input: input ?? null,
        messages: inv.messages,
        secrets: inv.secrets,
        metadata,
        env: version.env,
        params: inv.params ?? {},
        session_id: sessionId,
        run_id: runId,
        workflow: version.workflowRefName,
        version: version.version,
        version_id: version.versionId,
        token: auth.mintRunToken(claims),
        rpc_url: options.rpcUrl(),
        limits: {
          memory_bytes: options.limits.memoryBytes,
          cpu_seconds: Math.ceil(timeoutMs / 1000) + 5,
          open_files: options.limits.openFiles,
          file_bytes: options.limits.fileBytes,
        },
      },
    });
    const timer = setTimeout(() => {
      endedBy ??= "timeout";
      handle.kill();
    }, timeoutMs);
    const liveRun: LiveRun = {
      started,
      accountId,
      events,
      finished,
      secretValues,
      fetch: fetchForRun,
      cancel(reason) {
        endedBy ??= reason;
        handle.kill();
      },
    };
    live.set(runId, liveRun);
    return liveRun;
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
      if (req.offset < 0) throw invalid("offset must be 0 or more", "offset");
      if (req.limit < 0 || req.limit > 100) throw invalid("limit must be between 1 and 100", "limit");
      const rows = store.listRuns({
        accountId,
        workflowRefName: req.workflowRefName || undefined,
        sessionId: req.sessionId || undefined,
        status: req.status || undefined,
        offset: req.offset,
        limit: req.limit || 20,
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
