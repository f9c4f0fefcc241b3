import { type EncodedCall, encodeCall, type ModelProxyStore, type NewCall } from "./store.js";

/** Options of createRecorder. */
export interface RecorderOptions {
  /** flushMs is how long a record waits for others to share its write; default 200 (each commit costs milliseconds of this thread on a busy disk, so fewer, larger batches). */
  flushMs?: number;
  /**
   * batchSize is how many records a batch holds at most: a batch this full is written at once.
   * Default 64. Under load the records then wait tens of milliseconds, not flushMs: records that
   * waited 200 ms outlived two young-generation collections, so each was copied twice and promoted,
   * and the collections those copies lengthened were the proxy's p99 (bench/modelproxy.ts).
   */
  batchSize?: number;
  /** maxPending bounds the records held in memory, those being written included; beyond it records are dropped and counted. Default 10000. */
  maxPending?: number;
}

/** Recorder writes call records off the hot path, in batches, and counts what it could not write. */
export interface Recorder {
  push(row: NewCall): void;
  /** flush writes everything pending now; it settles once every record pushed before it is written (or dropped). */
  flush(): Promise<void>;
  counters(): { recorded: number; pending: number; dropped: number };
}

/** createRecorder batches call records into one transaction per flush, written one batch after another. */
export function createRecorder(store: ModelProxyStore, options: RecorderOptions = {}): Recorder {
  const flushMs = options.flushMs ?? 200;
  const maxPending = options.maxPending ?? 10_000;
  const batchSize = options.batchSize ?? 64;
  let pending: EncodedCall[] = [];
  let writing = 0;
  let recorded = 0;
  let dropped = 0;
  let timer: NodeJS.Timeout | undefined;
  // The batches are written in turn: a flush waits for the ones before it.
  let written: Promise<void> = Promise.resolve();

  async function write(batch: EncodedCall[]): Promise<void> {
    try {
      await store.insertCalls(batch);
      recorded += batch.length;
    } catch (e) {
      dropped += batch.length;
      // The message names the failure only: bodies (even redacted) stay out of logs, and drizzle's
      // wrapper of the driver's error quotes the query and its parameters.
      const failure = (e as Error).cause instanceof Error ? ((e as Error).cause as Error) : (e as Error);
      process.stderr.write(`modelproxy: could not record ${batch.length} model call(s): ${failure.message}\n`);
    } finally {
      writing -= batch.length;
    }
  }

  function flush(): Promise<void> {
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (pending.length > 0) {
      const batch = pending;
      pending = [];
      writing += batch.length;
      written = written.then(() => write(batch));
    }
    return written;
  }

  return {
    push(row) {
      if (pending.length + writing >= maxPending) {
        dropped++;
        return;
      }
      pending.push(encodeCall(row));
      if (pending.length >= batchSize) void flush();
      else timer ??= setTimeout(flush, flushMs);
    },
    flush,
    counters: () => ({ recorded, pending: pending.length + writing, dropped }),
  };
}
