import type { ModelProxyStore, NewCall } from "./store.js";

/** Options of createRecorder. */
export interface RecorderOptions {
  /** flushMs is how long a record waits for others to share its write; default 200 (each commit costs milliseconds of this thread on a busy disk, so fewer, larger batches). */
  flushMs?: number;
  /** maxPending bounds the records held in memory; beyond it records are dropped and counted. Default 10000. */
  maxPending?: number;
}

/** Recorder writes call records off the hot path, in batches, and counts what it could not write. */
export interface Recorder {
  push(row: NewCall): void;
  /** flush writes everything pending now (synchronously: better-sqlite3). */
  flush(): void;
  counters(): { recorded: number; pending: number; dropped: number };
}

/** createRecorder batches call records into one transaction per flush. */
export function createRecorder(store: ModelProxyStore, options: RecorderOptions = {}): Recorder {
  const flushMs = options.flushMs ?? 200;
  const maxPending = options.maxPending ?? 10_000;
  let pending: NewCall[] = [];
  let recorded = 0;
  let dropped = 0;
  let timer: NodeJS.Timeout | undefined;

  function flush(): void {
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (pending.length === 0) return;
    const batch = pending;
    pending = [];
    try {
      store.insertCalls(batch);
      recorded += batch.length;
    } catch (e) {
      dropped += batch.length;
      // The message names the failure only: bodies (even redacted) stay out of logs.
      process.stderr.write(`modelproxy: could not record ${batch.length} model call(s): ${(e as Error).message}\n`);
    }
  }

  return {
    push(row) {
      if (pending.length >= maxPending) {
        dropped++;
        return;
      }
      pending.push(row);
      timer ??= setTimeout(flush, flushMs);
    },
    flush,
    counters: () => ({ recorded, pending: pending.length, dropped }),
  };
}
