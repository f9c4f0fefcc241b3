import { RunStatus } from "../../gen/shaker/executor/v1/executor_pb.js";
import { redactJson } from "../shared/redact.js";
import type { Hop } from "./egress.js";
import { type Frame, type LogLine, usageOf } from "./events.js";
import type { RunError } from "./exits.js";
import type { ExecutorStore } from "./store.js";

/** RecordFields are what store.finishRun writes when a run ends. */
export type RecordFields = Omit<Parameters<ExecutorStore["finishRun"]>[1], "attempt" | "attempts" | "unjournaledCalls">;

/** RecordLimits bound what a run record keeps: a run may log, emit and fetch without end. */
export interface RecordLimits {
  /** maxLogLines: the first this many log lines are kept. */
  maxLogLines: number;
  /** maxEmittedBytes: emitted values are kept while their frames add up to at most this many bytes. */
  maxEmittedBytes: number;
  /** maxHttpCalls: the first this many ctx.http requests (each hop of a redirect counts) are kept. */
  maxHttpCalls: number;
}

/** RecordEnd is how a run ended, as its record says. */
export interface RecordEnd {
  status: RunStatus;
  error: RunError | undefined;
  warnings: readonly string[];
  finishedAt: number;
  durationMs: number;
}

/** RunRecorder is the record of one run under construction: every text in it is redacted as it comes in. */
export interface RunRecorder {
  /** result is the run's result frame, once it came. */
  readonly result: Frame<"result"> | undefined;
  /** error is the run's error frame, redacted, once it came. */
  readonly error: RunError | undefined;
  /** log keeps a log line while fewer than maxLogLines are kept, and returns it redacted (as the stream gets it too). */
  log(line: LogLine): LogLine;
  /** emitted keeps an emitted value, its frame `bytes` long, while the cap allows. */
  emitted(frame: Frame<"emit">, bytes: number): void;
  /** http keeps one ctx.http hop while fewer than maxHttpCalls are kept. */
  http(hop: Hop): void;
  returned(frame: Frame<"result">): void;
  /** raised keeps the run's error frame, and returns it redacted. */
  raised(frame: Frame<"error">): RunError;
  /** warnings are `first`, then one for each cap that dropped something (not redacted: the caller's own). */
  warnings(first: readonly string[]): string[];
  /** fields are what the record ends with: the output only when the run succeeded. */
  fields(end: RecordEnd): RecordFields;
}

/** createRunRecorder starts the record of a run whose texts `redact` cleans. */
export function createRunRecorder(redact: (text: string) => string, limits: RecordLimits): RunRecorder {
  const logs: RecordFields["logs"] = [];
  const emitted: RecordFields["emitted"] = [];
  const httpCalls: RecordFields["httpCalls"] = [];
  let logsDropped = 0;
  let emittedBytes = 0;
  let emittedDropped = 0;
  let httpDropped = 0;
  let result: Frame<"result"> | undefined;
  let error: RunError | undefined;
  return {
    get result() {
      return result;
    },
    get error() {
      return error;
    },
    log(line) {
      const entry = { ...line, message: redact(line.message), fields: redactJson(line.fields, redact) };
      if (logs.length < limits.maxLogLines) logs.push(entry);
      else logsDropped++;
      return entry;
    },
    emitted(frame, bytes) {
      // A run may emit without end (a long stream of tokens): the record keeps the first ones.
      emittedBytes += bytes;
      if (emittedBytes > limits.maxEmittedBytes) return void emittedDropped++;
      emitted.push({ seq: frame.seq, value: redactJson(frame.value, redact), time: frame.time * 1000 });
    },
    http(hop) {
      if (httpCalls.length >= limits.maxHttpCalls) return void httpDropped++;
      httpCalls.push({ ...hop, method: redact(hop.method), host: redact(hop.host), error: redact(hop.error) });
    },
    returned(frame) {
      result = frame;
    },
    raised(frame) {
      error = { type: redact(frame.type), message: redact(frame.message), traceback: redact(frame.traceback) };
      return error;
    },
    warnings(first) {
      const warnings = [...first];
      if (logsDropped > 0) warnings.push(`${logsDropped} log lines beyond the first ${limits.maxLogLines} were dropped`);
      if (httpDropped > 0)
        warnings.push(`${httpDropped} HTTP requests beyond the first ${limits.maxHttpCalls} were not kept on the run record`);
      if (emittedDropped > 0) {
        const kept = `beyond the first ${limits.maxEmittedBytes} bytes were not kept on the run record`;
        warnings.push(`${emittedDropped} emitted values ${kept} (the stream carried them all)`);
      }
      return warnings;
    },
    fields(end) {
      return {
        status: end.status,
        output: end.status === RunStatus.SUCCEEDED ? redactJson(result?.output ?? null, redact) : null,
        error: end.error ?? null,
        finishedAt: end.finishedAt,
        durationMs: end.durationMs,
        emitted,
        logs,
        httpCalls,
        warnings: end.warnings.map(redact),
        ...usageOf(result),
      };
    },
  };
}
