/** QueueOptions are the water marks of an AsyncQueue that tells its producer to slow down. */
export interface QueueOptions<T> {
  /** highWaterMark: onHigh is called once the queued weight reaches it. */
  highWaterMark: number;
  /** lowWaterMark: after onHigh, onLow is called once the consumer drains the weight to it or below. */
  lowWaterMark: number;
  /** weigh gives an item's weight (bytes, say); 1 per item when absent. */
  weigh?: (item: T) => number;
  onHigh: () => void;
  onLow: () => void;
}

/** lock serialises async sections: each runs once the one before it has settled, in call order. */
export function lock(): <T>(fn: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>) => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => undefined);
    return run;
  };
}

/**
 * shared makes calls by key, each key's call shared by whoever asks for it while it is in flight
 * (the requests that miss a cache together make one read, not one each).
 */
export function shared<V>(): (key: string, call: () => Promise<V>) => Promise<V> {
  const inFlight = new Map<string, Promise<V>>();
  return (key, call) => {
    let pending = inFlight.get(key);
    if (!pending) {
      pending = call();
      inFlight.set(key, pending);
      const settled = () => inFlight.delete(key);
      pending.then(settled, settled);
    }
    return pending;
  };
}

let queuedItems = 0;

/**
 * AsyncQueue hands values from a producer that cannot wait (a pipe, a socket) to one async
 * consumer. end() finishes the iteration; fail() makes it throw after the values already queued.
 * With water marks it asks the producer to pause (onHigh) and to resume (onLow), so a slow consumer
 * holds the producer back instead of letting the queue grow without bound.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private head = 0;
  private weights: number[] = [];
  private weight = 0;
  private high = false;
  private waiting: (() => void) | undefined;
  private done = false;
  private error: unknown;

  constructor(private readonly options?: QueueOptions<T>) {}

  /** queuedInProcess is the number of values queued in every AsyncQueue of this process (for tests). */
  static queuedInProcess(): number {
    return queuedItems;
  }

  push(item: T): void {
    if (this.done) return;
    this.items.push(item);
    queuedItems++;
    const options = this.options;
    if (options) {
      const w = options.weigh ? options.weigh(item) : 1;
      this.weights.push(w);
      this.weight += w;
      if (!this.high && this.weight >= options.highWaterMark) {
        this.high = true;
        options.onHigh();
      }
    }
    this.wake();
  }

  end(): void {
    this.done = true;
    this.wake();
  }

  fail(error: unknown): void {
    if (this.done) return;
    this.error = error;
    this.done = true;
    this.wake();
  }

  /** size is the number of values queued and not yet consumed. */
  get size(): number {
    return this.items.length - this.head;
  }

  /** isHigh is true between onHigh and onLow. */
  get isHigh(): boolean {
    return this.high;
  }

  private wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }

  private take(): T {
    const item = this.items[this.head];
    this.items[this.head] = undefined as T; // let it be collected while the rest waits
    this.head++;
    queuedItems--;
    const options = this.options;
    if (options) {
      this.weight -= this.weights[this.head - 1];
      if (this.high && this.weight <= options.lowWaterMark) {
        this.high = false;
        options.onLow();
      }
    }
    // Compact now and then, so taking stays O(1) amortised and the arrays do not grow forever.
    if (this.head === this.items.length) {
      this.items = [];
      this.weights = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.weights = this.weights.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    try {
      for (;;) {
        // One value at a time: the weight counts down only as the consumer asks for more.
        if (this.size > 0) {
          yield this.take();
          continue;
        }
        if (this.done) {
          if (this.error !== undefined) throw this.error;
          return;
        }
        await new Promise<void>((resolve) => (this.waiting = resolve));
      }
    } finally {
      // A consumer that stops early leaves nothing behind.
      queuedItems -= this.size;
      this.done = true;
      this.items = [];
      this.weights = [];
      this.head = 0;
      this.weight = 0;
    }
  }
}
