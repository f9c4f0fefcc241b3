import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { LogLevel, type RunResult, type RunStreamResponseSchema } from "../../gen/shaker/executor/v1/executor_pb.js";
import { timestampOf, toValue } from "../shared/json.js";
import type { WorkerEvent } from "./pool.js";

/** StreamEvent is one message of RunStream. */
export type StreamEvent = MessageInitShape<typeof RunStreamResponseSchema>;

/** The frames of one kind, by their kind. */
export type Frame<T extends WorkerEvent["t"]> = Extract<WorkerEvent, { t: T }>;

/** LogLine is one log line of a run: a ctx.log, or a line of its captured stdout or stderr. */
export interface LogLine {
  level: LogLevel;
  message: string;
  fields: Record<string, unknown>;
  /** time is in milliseconds since the epoch. */
  time: number;
  /** source is "ctx", "stdout" or "stderr". */
  source: string;
}

/** Usage is what a run's model calls counted, as the run record and RunResult carry it. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
}

/** messageCost is what a stream message weighs in its listener's queue, besides an emitted value's bytes. */
export const messageCost = 256;

const levelByName: Record<string, LogLevel> = {
  LOG_LEVEL_DEBUG: LogLevel.DEBUG,
  LOG_LEVEL_INFO: LogLevel.INFO,
  LOG_LEVEL_WARNING: LogLevel.WARNING,
  LOG_LEVEL_ERROR: LogLevel.ERROR,
};

/** logLevel is the level a ctx.log frame names; INFO for a name it does not know. */
export function logLevel(name: string): LogLevel {
  return levelByName[name] ?? LogLevel.INFO;
}

/** FrameTranslator turns one run's frames into its log lines. */
export interface FrameTranslator {
  /**
   * logs are the log lines a frame makes: a ctx.log's one; the whole lines of captured output (the
   * end of a line that is not complete yet is kept for a later frame); at exit, what was kept.
   */
  logs(event: WorkerEvent): readonly LogLine[];
}

const none: readonly LogLine[] = Object.freeze([]);

/** createFrameTranslator makes the translator of one run; now gives the time of captured lines. */
export function createFrameTranslator(now: () => number = Date.now): FrameTranslator {
  // Captured output arrives in arbitrary chunks: log whole lines, keep the rest for later.
  const partial = { stdout: "", stderr: "" };
  const outputLine = (stream: "stdout" | "stderr", message: string, time: number): LogLine => ({
    level: stream === "stderr" ? LogLevel.ERROR : LogLevel.INFO,
    message,
    fields: {},
    time,
    source: stream,
  });
  return {
    logs(event) {
      switch (event.t) {
        case "log":
          return [
            { level: logLevel(event.level), message: event.message, fields: event.fields ?? {}, time: event.time * 1000, source: "ctx" },
          ];
        case "output": {
          const lines = (partial[event.stream] + event.data).split("\n");
          partial[event.stream] = lines.pop() ?? "";
          const time = now();
          return lines.map((line) => outputLine(event.stream, line, time));
        }
        case "exit": {
          const time = now();
          const rest = (["stdout", "stderr"] as const).filter((s) => partial[s]).map((s) => outputLine(s, partial[s], time));
          partial.stdout = partial.stderr = "";
          return rest;
        }
        default:
          return none;
      }
    },
  };
}

/** logMessage is a log line as the stream carries it. */
export function logMessage(line: LogLine): StreamEvent {
  const { level, message, fields, time, source } = line;
  return { event: { case: "log", value: { level, message, fields: fields as JsonObject, time: timestampOf(time), source } as never } };
}

const weights = new WeakMap<StreamEvent, number>();

/**
 * emittedMessage is an emitted value as the stream carries it: the value as the run emitted it. Its
 * frame's size (`bytes`), plus what a message costs anyway, is its weight in its listener's queue.
 */
export function emittedMessage(frame: Frame<"emit">, bytes: number): StreamEvent {
  const message: StreamEvent = {
    event: { case: "emitted", value: { seq: frame.seq, value: toValue(frame.value), time: timestampOf(frame.time * 1000) } as never },
  };
  weights.set(message, bytes + messageCost);
  return message;
}

/** weightOf is what a stream message weighs in its listener's queue: messageCost but for emitted values. */
export function weightOf(message: StreamEvent): number {
  return weights.get(message) ?? messageCost;
}

/** usageOf is the usage a run's result frame reports; none without one. */
export function usageOf(result: Frame<"result"> | undefined): Usage {
  return { promptTokens: result?.usage?.prompt_tokens ?? 0, completionTokens: result?.usage?.completion_tokens ?? 0 };
}

/** runResult is the RunResult of a run that returned. */
export function runResult(
  run: { runId: string; sessionId: string },
  result: Frame<"result">,
  warnings: string[],
  durationMs: number,
): RunResult {
  const usage = usageOf(result);
  return {
    $typeName: "shaker.executor.v1.RunResult",
    runId: run.runId,
    sessionId: run.sessionId,
    output: toValue(result.output),
    usage: { $typeName: "shaker.executor.v1.Usage", ...usage, totalTokens: usage.promptTokens + usage.completionTokens },
    warnings,
    durationMs,
  };
}
