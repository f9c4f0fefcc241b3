// The Executor's parts alone, without Python or a server: admission (who may run, how deep, how many
// at once), the run recorder (caps and redaction), the exit classifier (every way a run ends) and the
// frame translator (frames to log lines and stream messages). The same rules end to end, with real
// processes, are test/executor.test.ts, test/backpressure.test.ts and test/secrets-recorded.test.ts.
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { LogLevel, RunStatus } from "../gen/shaker/executor/v1/executor_pb.js";
import { type AdmissionOptions, createAdmission } from "../services/executor/admission.js";
import {
  createFrameTranslator,
  emittedMessage,
  type LogLine,
  logLevel,
  logMessage,
  messageCost,
  runResult,
  usageOf,
  weightOf,
} from "../services/executor/events.js";
import { classifyExit, type RunEnd } from "../services/executor/exits.js";
import { createRunRecorder, type RecordLimits } from "../services/executor/recorder.js";
import type { Identity, RunClaims } from "../services/shared/auth.js";
import { fromValue, msOf } from "../services/shared/json.js";
import { createRunRedactor } from "../services/shared/redact.js";

/** refusal is the ConnectError a call throws (undefined when it does not throw). */
function refusal(call: () => unknown): ConnectError | undefined {
  try {
    call();
  } catch (e) {
    return ConnectError.from(e);
  }
  return undefined;
}

describe("admission", () => {
  const limits: AdmissionOptions = { maxConcurrentRuns: 3, maxConcurrentRunsPerAccount: 2, maxNestingDepth: 2 };
  const key = (accountId: string, admin = false): Identity => ({ kind: "key", accountId, admin, keyId: "key_1" });
  const runOf = (accountId: string, depth: number): Identity => {
    const claims: RunClaims = {
      account: accountId,
      workflow: "wf",
      version: "1.0.0",
      versionId: "ver_1",
      run: "run_parent",
      session: "sess_parent",
      datastores: [],
      depth,
      exp: Date.now() + 60_000,
    };
    return { kind: "run", accountId, claims };
  };

  it("gives a top-level caller depth 0 and a run's nested run its parent's depth + 1, up to the limit", () => {
    const admission = createAdmission(limits);
    expect(admission.check(key("acc_a"))).toEqual({ accountId: "acc_a", parent: undefined, depth: 0 });
    expect(admission.check({ kind: "service", accountId: "acc_a" }).depth).toBe(0);
    const nested = admission.check(runOf("acc_a", 1));
    expect(nested.depth).toBe(2);
    expect(nested.parent?.run).toBe("run_parent");
    const tooDeep = refusal(() => admission.check(runOf("acc_a", 2)));
    expect(tooDeep?.code).toBe(Code.FailedPrecondition);
    expect(tooDeep?.rawMessage).toBe("workflow nesting is limited to 2 levels");
  });

  it("refuses a caller that names no account", () => {
    const err = refusal(() => createAdmission(limits).check({ kind: "service", accountId: "" }));
    expect(err?.code).toBe(Code.Unauthenticated);
  });

  it("where runs cannot be confined, admits admins' keys and runs' own nested runs only", () => {
    const admission = createAdmission({ ...limits, unconfinedRunsForAdminsOnly: "no user namespaces" });
    const err = refusal(() => admission.check(key("acc_a")));
    expect(err?.code).toBe(Code.FailedPrecondition);
    expect(err?.rawMessage).toBe(
      "this server cannot confine runs (no user namespaces), so it runs only admin accounts' workflows; its operator can allow all knowingly with SHAKER_SANDBOX=none",
    );
    expect(admission.check(key("acc_a", true)).accountId).toBe("acc_a");
    expect(admission.check(runOf("acc_a", 0)).depth).toBe(1);
    expect(admission.check({ kind: "service", accountId: "acc_a" }).accountId).toBe("acc_a");
    // Without the rule, anybody's key passes.
    expect(createAdmission(limits).check(key("acc_a")).accountId).toBe("acc_a");
  });

  it("holds an account to its limit and the server to its own, and frees a place on release, once", () => {
    const admission = createAdmission(limits);
    const a1 = admission.admit("acc_a");
    const a2 = admission.admit("acc_a");
    const mine = refusal(() => admission.admit("acc_a"));
    expect(mine?.code).toBe(Code.ResourceExhausted);
    expect(mine?.rawMessage).toBe("this account's concurrency limit (2 runs) is reached; try again shortly");
    const b1 = admission.admit("acc_b");
    expect(admission.running()).toBe(3);
    const full = refusal(() => admission.admit("acc_c"));
    expect(full?.code).toBe(Code.ResourceExhausted);
    expect(full?.rawMessage).toBe("the server runs 3 runs already; try again shortly");

    a1();
    a1(); // a second release gives nothing more back
    expect(admission.running()).toBe(2);
    const a3 = admission.admit("acc_a");
    expect(refusal(() => admission.admit("acc_a"))?.code).toBe(Code.ResourceExhausted);
    for (const release of [a2, a3, b1]) release();
    expect(admission.running()).toBe(0);
    // Every place is back: each account may fill its limit again.
    admission.admit("acc_a");
    admission.admit("acc_a");
    admission.admit("acc_b");
    expect(admission.running()).toBe(3);
  });
});

describe("run recorder", () => {
  const secret = "sk-live-abcdef123456";
  const pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----";
  const limits: RecordLimits = { maxLogLines: 2, maxEmittedBytes: 100, maxHttpCalls: 1 };
  const recorder = () => createRunRecorder(createRunRedactor([secret, pem]), limits);
  const line = (message: string, fields: Record<string, unknown> = {}): LogLine => ({
    level: LogLevel.INFO,
    message,
    fields,
    time: 1000,
    source: "ctx",
  });
  const end = { status: RunStatus.SUCCEEDED, error: undefined, warnings: [], finishedAt: 2000, durationMs: 1000 };
  const emit = (seq: number, value: unknown) => ({ t: "emit" as const, seq, value, time: 1.5 });

  it("redacts every log line, kept or not, in its message and its fields' keys and values", () => {
    const r = recorder();
    const logged = r.log(line(`key ${secret} at https://user:pw@example.com/x`, { [secret]: [secret, 1] }));
    expect(logged).toEqual(line("key [REDACTED] at https://[REDACTED]@example.com/x", { "[REDACTED]": ["[REDACTED]", 1] }));
    // A multi-line secret printed line by line is blanked line by line.
    expect(r.log(line("MIIEvQIBADANBgkqhkiG9w0B")).message).toBe("[REDACTED]");
    const dropped = r.log(line(`third ${secret}`));
    expect(dropped.message).toBe("third [REDACTED]");
    expect(r.fields(end).logs!.map((l) => l.message)).toEqual(["key [REDACTED] at https://[REDACTED]@example.com/x", "[REDACTED]"]);
    expect(r.warnings([])).toEqual(["1 log lines beyond the first 2 were dropped"]);
  });

  it("keeps emitted values while their frames add up to the byte cap, redacted, times in milliseconds", () => {
    const r = recorder();
    r.emitted(emit(1, { token: secret }), 60);
    r.emitted(emit(2, "b"), 40);
    r.emitted(emit(3, "c"), 1);
    r.emitted(emit(4, "d"), 1);
    expect(r.fields(end).emitted).toEqual([
      { seq: 1, value: { token: "[REDACTED]" }, time: 1500 },
      { seq: 2, value: "b", time: 1500 },
    ]);
    expect(r.warnings([])).toEqual([
      "2 emitted values beyond the first 100 bytes were not kept on the run record (the stream carried them all)",
    ]);
  });

  it("keeps the first ctx.http hops, redacted", () => {
    const r = recorder();
    r.http({ method: "GET", host: `${secret}.example.com`, status: 0, durationMs: 3, error: `refused ${secret}`, time: 5 });
    r.http({ method: "GET", host: "example.com", status: 200, durationMs: 1, error: "", time: 6 });
    expect(r.fields(end).httpCalls).toEqual([
      { method: "GET", host: "[REDACTED].example.com", status: 0, durationMs: 3, error: "refused [REDACTED]", time: 5 },
    ]);
    expect(r.warnings([])).toEqual(["1 HTTP requests beyond the first 1 were not kept on the run record"]);
  });

  it("lists the warnings given first, then each cap's, and redacts them on the record only", () => {
    const r = recorder();
    for (let i = 0; i < 3; i++) r.log(line(`l${i}`));
    for (let i = 0; i < 2; i++) r.http({ method: "GET", host: "h", status: 200, durationMs: 1, error: "", time: 1 });
    r.emitted(emit(1, "x"), 101);
    const warnings = r.warnings([`OUTPUT_SCHEMA: ${secret}`]);
    expect(warnings).toEqual([
      `OUTPUT_SCHEMA: ${secret}`,
      "1 log lines beyond the first 2 were dropped",
      "1 HTTP requests beyond the first 1 were not kept on the run record",
      "1 emitted values beyond the first 100 bytes were not kept on the run record (the stream carried them all)",
    ]);
    expect(r.fields({ ...end, warnings }).warnings![0]).toBe("OUTPUT_SCHEMA: [REDACTED]");
    expect(recorder().warnings([])).toEqual([]);
  });

  it("redacts an error as it arrives, and records the output, redacted, only for a run that succeeded", () => {
    const r = recorder();
    expect(r.result).toBeUndefined();
    expect(r.error).toBeUndefined();
    r.raised({ t: "error", type: "ValueError", message: `bad ${secret}`, traceback: `line 1: ${secret}` });
    expect(r.error).toEqual({ type: "ValueError", message: "bad [REDACTED]", traceback: "line 1: [REDACTED]" });
    const result = { t: "result" as const, output: { echo: secret }, usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } };
    r.returned(result);
    expect(r.result).toBe(result);
    const ok = r.fields(end);
    expect(ok).toMatchObject({
      status: RunStatus.SUCCEEDED,
      output: { echo: "[REDACTED]" },
      error: null,
      promptTokens: 3,
      completionTokens: 4,
    });
    expect(ok.finishedAt).toBe(2000);
    expect(ok.durationMs).toBe(1000);
    const error = { type: "TimeoutError", message: "late", traceback: "" };
    const failed = r.fields({ ...end, status: RunStatus.TIMED_OUT, error });
    expect(failed.output).toBeNull();
    expect(failed.error).toBe(error);
    // A run that never returned used nothing it can report.
    expect(recorder().fields({ ...end, status: RunStatus.FAILED })).toMatchObject({ output: null, promptTokens: 0, completionTokens: 0 });
  });
});

describe("exit classifier", () => {
  const exit = { code: 0, signal: 0, output_truncated: false };
  const base: RunEnd = { endedBy: undefined, returned: false, error: undefined, exit, timeoutSeconds: 5 };
  const classify = (end: Partial<RunEnd>) => classifyExit({ ...base, ...end });
  const crashed = (exitOf: Partial<RunEnd["exit"]>) => {
    const outcome = classify({ exit: { ...exit, ...exitOf } });
    expect(outcome.status).toBe(RunStatus.FAILED);
    expect(outcome.error?.type).toBe("ProcessCrashed");
    expect(outcome.failure?.code).toBe(Code.Unknown);
    expect(outcome.failure?.rawMessage).toBe(`ProcessCrashed: ${outcome.error?.message}`);
    return outcome.error!.message;
  };

  it("a timeout, whatever the process did, with the version's timeout in the message", () => {
    const outcome = classify({ endedBy: "timeout", returned: true, exit: { ...exit, signal: 9 } });
    expect(outcome.status).toBe(RunStatus.TIMED_OUT);
    expect(outcome.error).toEqual({ type: "TimeoutError", message: "the run exceeded its timeout of 5s and was killed", traceback: "" });
    expect(outcome.failure?.code).toBe(Code.DeadlineExceeded);
    expect(outcome.failure?.rawMessage).toBe(outcome.error?.message);
  });

  it("cancelled, and a caller that disconnected", () => {
    const cancelled = classify({ endedBy: "cancelled", error: { type: "ValueError", message: "x", traceback: "" } });
    expect(cancelled.status).toBe(RunStatus.CANCELLED);
    expect(cancelled.error).toEqual({ type: "Cancelled", message: "the run was cancelled", traceback: "" });
    expect(cancelled.failure?.code).toBe(Code.Canceled);
    const gone = classify({ endedBy: "disconnected", returned: true });
    expect(gone.status).toBe(RunStatus.CANCELLED);
    expect(gone.error?.message).toBe("the caller disconnected");
    expect(gone.failure?.rawMessage).toBe("the caller disconnected");
  });

  it("succeeded: a result and exit code 0", () => {
    expect(classify({ returned: true })).toEqual({ status: RunStatus.SUCCEEDED, error: undefined, failure: undefined });
  });

  it("raised: the run's own error, as the caller sees it", () => {
    const error = { type: "ValueError", message: "boom", traceback: "Traceback ..." };
    const outcome = classify({ error, exit: { ...exit, code: 1 } });
    expect(outcome.status).toBe(RunStatus.FAILED);
    expect(outcome.error).toBe(error);
    expect(outcome.failure?.code).toBe(Code.Unknown);
    expect(outcome.failure?.rawMessage).toBe("ValueError: boom");
    // A worker that died reports its runs the same way.
    const died = classify({
      error: { type: "WorkerDied", message: "the Python worker running this workflow died (SIGKILL)", traceback: "" },
      exit: { ...exit, code: 1 },
    });
    expect(died.failure?.rawMessage).toBe("WorkerDied: the Python worker running this workflow died (SIGKILL)");
  });

  it("crashed: output beyond the limit, memory beyond the limit, a signal, an exit code, in that order", () => {
    expect(crashed({ output_truncated: true, memory_exceeded: true, signal: 9 })).toBe(
      "the workflow did not finish: it wrote more output than the limit and was killed",
    );
    expect(crashed({ signal: 9, memory_exceeded: true })).toBe(
      "the workflow did not finish: it used more memory than the run's limit (its processes and its /tmp together) and was killed",
    );
    expect(crashed({ signal: 9 })).toBe(
      "the workflow did not finish: its process was killed by signal 9 (SIGKILL: memory or CPU limit, or killed from outside)",
    );
    expect(crashed({ signal: 11 })).toBe("the workflow did not finish: its process was killed by signal 11 (SIGSEGV: segmentation fault)");
    expect(crashed({ signal: 15 })).toBe("the workflow did not finish: its process was killed by signal 15");
    expect(crashed({ code: 3 })).toBe("the workflow did not finish: its process exited with code 3 before returning");
    // Neither a result nor an error, and exit code 0: it still did not return.
    expect(crashed({})).toBe("the workflow did not finish: its process exited with code 0 before returning");
  });

  it("a result from a process that then exited with a code is a crash", () => {
    expect(classify({ returned: true, exit: { ...exit, code: 2 } }).error?.message).toBe(
      "the workflow did not finish: its process exited with code 2 before returning",
    );
  });
});

describe("frame translator", () => {
  it("makes a ctx.log frame one log line, its level by name, its time in milliseconds", () => {
    const frames = createFrameTranslator(() => 0);
    expect(frames.logs({ t: "log", level: "LOG_LEVEL_WARNING", message: "careful", fields: { n: 1 }, time: 2.5 })).toEqual([
      { level: LogLevel.WARNING, message: "careful", fields: { n: 1 }, time: 2500, source: "ctx" },
    ]);
    expect(logLevel("LOG_LEVEL_DEBUG")).toBe(LogLevel.DEBUG);
    expect(logLevel("LOG_LEVEL_ERROR")).toBe(LogLevel.ERROR);
    expect(logLevel("LOUD")).toBe(LogLevel.INFO);
    const bare = frames.logs({ t: "log", level: "LOG_LEVEL_INFO", message: "m", time: 1 } as never);
    expect(bare[0].fields).toEqual({});
  });

  it("logs captured output by whole lines, each stream apart, and what is left at exit", () => {
    let now = 100;
    const frames = createFrameTranslator(() => now);
    const out = (stream: "stdout" | "stderr", data: string) => frames.logs({ t: "output", stream, data });
    expect(out("stdout", "hel")).toEqual([]);
    expect(out("stderr", "warn")).toEqual([]);
    expect(out("stdout", "lo\nwor")).toEqual([{ level: LogLevel.INFO, message: "hello", fields: {}, time: 100, source: "stdout" }]);
    now = 200;
    expect(out("stderr", "ing\n\nnext")).toEqual([
      { level: LogLevel.ERROR, message: "warning", fields: {}, time: 200, source: "stderr" },
      { level: LogLevel.ERROR, message: "", fields: {}, time: 200, source: "stderr" },
    ]);
    now = 300;
    expect(frames.logs({ t: "exit", code: 0, signal: 0, output_truncated: false })).toEqual([
      { level: LogLevel.INFO, message: "wor", fields: {}, time: 300, source: "stdout" },
      { level: LogLevel.ERROR, message: "next", fields: {}, time: 300, source: "stderr" },
    ]);
    expect(frames.logs({ t: "exit", code: 0, signal: 0, output_truncated: false })).toEqual([]);
  });

  it("makes no log line of the other frames", () => {
    const frames = createFrameTranslator();
    expect(frames.logs({ t: "started", pid: 1 })).toEqual([]);
    expect(frames.logs({ t: "emit", seq: 0, value: 1, time: 1 })).toEqual([]);
    expect(frames.logs({ t: "error", type: "E", message: "m", traceback: "" })).toEqual([]);
    expect(frames.logs({ t: "result", output: 1, usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 } })).toEqual([]);
    expect(frames.logs({ t: "exit", code: 0, signal: 0, output_truncated: false })).toEqual([]);
  });

  it("makes stream messages of log lines and emitted values, an emitted value weighing its frame's bytes", () => {
    const log = logMessage({ level: LogLevel.ERROR, message: "m", fields: { a: [1] }, time: 1234, source: "stderr" });
    expect(log.event?.case).toBe("log");
    const logValue = log.event!.value as { level: LogLevel; message: string; fields: unknown; time: never; source: string };
    expect(logValue).toMatchObject({ level: LogLevel.ERROR, message: "m", fields: { a: [1] }, source: "stderr" });
    expect(msOf(logValue.time)).toBe(1234);
    expect(weightOf(log)).toBe(messageCost);

    const emitted = emittedMessage({ t: "emit", seq: 7, value: { text: "hi" }, time: 1.25 }, 1000);
    expect(emitted.event?.case).toBe("emitted");
    const value = emitted.event!.value as { seq: number; value: never; time: never };
    expect(value.seq).toBe(7);
    expect(fromValue(value.value)).toEqual({ text: "hi" });
    expect(msOf(value.time)).toBe(1250);
    expect(weightOf(emitted)).toBe(1000 + messageCost);
  });

  it("makes a RunResult of a result frame, its usage summed", () => {
    const result = { t: "result" as const, output: ["a", 1], usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } };
    const message = runResult({ runId: "run_1", sessionId: "sess_1" }, result, ["w"], 12.5);
    expect(message.runId).toBe("run_1");
    expect(message.sessionId).toBe("sess_1");
    expect(fromValue(message.output)).toEqual(["a", 1]);
    expect(message.usage).toMatchObject({ promptTokens: 5, completionTokens: 2, totalTokens: 7 });
    expect(message.warnings).toEqual(["w"]);
    expect(message.durationMs).toBe(12.5);
    expect(usageOf(undefined)).toEqual({ promptTokens: 0, completionTokens: 0 });
    expect(usageOf({ ...result, usage: undefined } as never)).toEqual({ promptTokens: 0, completionTokens: 0 });
  });
});
