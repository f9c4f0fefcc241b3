import { invalidArgument } from "../shared/errors.js";
import { AsyncQueue } from "../shared/queue.js";
import { type StreamEvent, weightOf } from "./events.js";

/**
 * Cursor is how far into a run's events a listener is: how many emitted values and how many log
 * lines it has. Its text, "<emitted>.<logs>", is the event_id of every event and the SSE `id:`.
 *
 * A cursor counts rather than points, so it means the same in every execution of a run: a run
 * resumed after a crash executes again from the top and emits again what it emitted before (replayed
 * ctx calls answer as they did), so a listener that rejoins with its cursor gets only what it lacks.
 */
export interface Cursor {
  emitted: number;
  logs: number;
}

export const cursorStart: Readonly<Cursor> = Object.freeze({ emitted: 0, logs: 0 });

const cursorPattern = /^(\d{1,9})\.(\d{1,9})$/;

/** parseCursor reads an event_id (a Last-Event-ID); "" is the start. */
export function parseCursor(text: string, param = "after"): Cursor {
  if (text === "") return { ...cursorStart };
  const m = cursorPattern.exec(text.trim());
  if (!m)
    throw invalidArgument(`${param} must be an event id such as "3.5" (emitted values.log lines), got ${JSON.stringify(text)}`, param);
  return { emitted: Number(m[1]), logs: Number(m[2]) };
}

export const cursorId = (c: Cursor): string => `${c.emitted}.${c.logs}`;

/** Options of RunEvents. */
export interface RunEventsOptions {
  /** highWaterBytes: a listener with this much unread pauses the run until it reads down to lowWaterBytes. */
  highWaterBytes: number;
  lowWaterBytes: number;
  /** maxHistoryBytes: the oldest events are forgotten beyond this (a listener from the start misses them). */
  maxHistoryBytes: number;
  /** pause and resume hold the run's process back while any listener is slow. */
  pause(): void;
  resume(): void;
}

interface Kept {
  message: StreamEvent;
  /** emitted and logs are the event's own position: it is an emitted value when kind is "emitted". */
  index: number;
  kind: "emitted" | "log";
  weight: number;
}

/**
 * RunEvents are the events of one run in flight, for any number of listeners (the caller that
 * started it, a retry that attached to it, a rejoin through WatchRun), each from its own cursor.
 * Events are kept while the run lasts (up to maxHistoryBytes), so a listener may come late.
 */
export class RunEvents {
  private readonly kept: Kept[] = [];
  private keptBytes = 0;
  private readonly counts: Cursor = { emitted: 0, logs: 0 };
  private readonly listeners = new Map<AsyncQueue<StreamEvent>, { after: Cursor; high: boolean }>();
  private paused = 0;
  private end: { result: StreamEvent } | { error: unknown } | undefined;

  constructor(private readonly options: RunEventsOptions) {}

  /** position is how many emitted values and log lines the run has had. */
  get position(): Cursor {
    return { ...this.counts };
  }

  /** publish adds an emitted value or a log line, numbered after those before it, and returns its event_id. */
  publish(message: StreamEvent): void {
    const kind = message.event?.case === "emitted" ? "emitted" : "log";
    const index = kind === "emitted" ? this.counts.emitted++ : this.counts.logs++;
    message.eventId = cursorId(this.counts);
    const kept: Kept = { message, index, kind, weight: weightOf(message) };
    this.kept.push(kept);
    this.keptBytes += kept.weight;
    while (this.keptBytes > this.options.maxHistoryBytes && this.kept.length > 1) this.keptBytes -= this.kept.shift()!.weight;
    for (const [queue, l] of this.listeners) if (wanted(kept, l.after)) queue.push(message);
  }

  /** finish ends every listener with the run's result message. */
  finish(result: StreamEvent): void {
    this.end = { result };
    for (const queue of this.listeners.keys()) {
      queue.push(result);
      queue.end();
    }
  }

  /** fail ends every listener with the run's error, after what they have not read yet. */
  fail(error: unknown): void {
    this.end = { error };
    for (const queue of this.listeners.keys()) queue.fail(error);
  }

  /**
   * listen returns the events after `after`, then the live ones, then the end. Whoever listens
   * calls stop when it stops reading (a slow listener no longer holds the run back).
   */
  listen(after: Cursor): { events: AsyncIterable<StreamEvent>; stop: () => void } {
    const state = { after, high: false };
    const queue: AsyncQueue<StreamEvent> = new AsyncQueue<StreamEvent>({
      highWaterMark: this.options.highWaterBytes,
      lowWaterMark: this.options.lowWaterBytes,
      weigh: weightOf,
      onHigh: () => {
        state.high = true;
        if (this.paused++ === 0) this.options.pause();
      },
      onLow: () => this.unpause(state),
    });
    for (const kept of this.kept) if (wanted(kept, after)) queue.push(kept.message);
    if (this.end && "result" in this.end) {
      queue.push(this.end.result);
      queue.end();
    } else if (this.end) queue.fail(this.end.error);
    else this.listeners.set(queue, state);
    return {
      events: queue,
      stop: () => {
        this.listeners.delete(queue);
        this.unpause(state);
      },
    };
  }

  private unpause(state: { high: boolean }): void {
    if (!state.high) return;
    state.high = false;
    if (--this.paused === 0) this.options.resume();
  }
}

function wanted(kept: Kept, after: Cursor): boolean {
  return kept.kind === "emitted" ? kept.index >= after.emitted : kept.index >= after.logs;
}
