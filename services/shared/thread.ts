// A worker thread that serves calls: what keeps a service's synchronous SQLite writes (the Datastore's
// uploads, the ModelProxy's call records) off the event loop that serves every request. The thread
// module (TypeScript, run through tsx's loader as the rest of Shaker) answers with serveThread; the
// service calls it with startThread's `call`, each call a promise of its result.

import { createRequire } from "node:module";
import { setPriority } from "node:os";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { parentPort, Worker } from "node:worker_threads";

const require = createRequire(import.meta.url);

/** The worker's bootstrap: tsx's loader, then the thread's module. */
const bootstrap = `
const { workerData } = require("node:worker_threads");
import(workerData.tsx).then((m) => { m.register(); return import(workerData.entry); }).catch((e) => {
  console.error(e);
  process.exit(1);
});
`;

/**
 * Moved is an argument sent with its `transfer` list: a MessagePort, or buffers that move to the
 * thread instead of being copied (a buffer moved must be the value's own, never a Buffer from
 * Node's shared pool).
 */
export class Moved<T> {
  constructor(
    readonly value: T,
    readonly transfer: Transferable[],
  ) {}
}

/** unwrap is a call's arguments with Moved ones unwrapped, and what they transfer. */
function unwrap(values: unknown[]): { values: unknown[]; transfer: Transferable[] } {
  const transfer: Transferable[] = [];
  return {
    values: values.map((v) => {
      if (!(v instanceof Moved)) return v;
      transfer.push(...v.transfer);
      return v.value;
    }),
    transfer,
  };
}

/** Thread is a started worker thread, as its owner holds it. */
export interface Thread {
  /** call runs the thread's `op` with args (structured-cloned, or Moved) and settles with its answer. */
  call<T>(op: string, ...args: unknown[]): Promise<T>;
  /** close calls the thread's "close" op, when it has one, then ends the thread. */
  close(): Promise<void>;
}

/**
 * startThread starts the module at `entry` (a file URL) in a worker thread, with `data` as its
 * workerData, and waits for its "ready" op: when this resolves, the module's top level has run. A
 * thread that fails or exits fails every call in flight and every later one, with `name` in the error.
 */
export async function startThread(name: string, entry: URL, data: Record<string, unknown>): Promise<Thread> {
  const tsx = pathToFileURL(join(dirname(require.resolve("tsx/package.json")), "dist/esm/api/index.mjs")).href;
  const worker = new Worker(bootstrap, { eval: true, workerData: { ...data, tsx, entry: entry.href } });
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let next = 0;
  let failed: Error | undefined;
  const failAll = (e: Error) => {
    failed ??= e;
    for (const p of pending.values()) p.reject(failed);
    pending.clear();
  };
  worker.on("message", (m: { id: number; result?: unknown; error?: string }) => {
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.error !== undefined) p.reject(new Error(m.error));
    else p.resolve(m.result);
  });
  worker.on("error", failAll);
  worker.on("exit", (code) => failAll(new Error(`the ${name} thread exited (${code})`)));
  const call = <T>(op: string, ...args: unknown[]): Promise<T> => {
    if (failed) return Promise.reject(failed);
    const id = next++;
    return new Promise<T>((resolve, reject) => {
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      const sent = unwrap(args);
      worker.postMessage({ id, op, args: sent.values }, sent.transfer as never);
    });
  };
  await call("ready");
  return {
    call,
    async close() {
      if (failed) return;
      await call("close");
      await worker.terminate();
    },
  };
}

// biome-ignore lint/suspicious/noExplicitAny: each op takes its own arguments, cloned from its caller's.
type Op = (...args: any[]) => unknown;

/**
 * serveThread answers startThread's calls in the thread with `ops` (plus "ready", and "close" when
 * ops have none), each as its message arrives. An op that returns a promise answers when it
 * settles, and messages that arrive meanwhile are served: an op that must wait for another's end
 * waits itself (the Datastore's writer chains its writes). An op that throws or rejects fails its
 * call with the error's message. `after` runs after each op that answered.
 */
export function serveThread(ops: Record<string, Op>, after?: (op: string) => void): void {
  const all: Record<string, Op> = { ready: () => true, close: () => undefined, ...ops };
  const answer = (id: number, op: string, result: unknown) => {
    parentPort!.postMessage({ id, result });
    after?.(op);
  };
  const fail = (id: number, e: unknown) => parentPort!.postMessage({ id, error: (e as Error).message });
  parentPort!.on("message", ({ id, op, args }: { id: number; op: string; args: unknown[] }) => {
    try {
      const fn = all[op];
      if (!fn) throw new Error(`no op ${op}`);
      const result = fn(...args);
      if (result instanceof Promise) result.then((r) => answer(id, op, r)).catch((e) => fail(id, e));
      else answer(id, op, result);
    } catch (e) {
      fail(id, e);
    }
  });
}

/**
 * niceThisThread lowers the calling worker thread's priority to `nice` (0 is the event loop's, 19 the
 * lowest), so that its work yields the CPU to the event loop when both want it. On Linux a thread's
 * nice is its own (setpriority of "this process" sets the calling thread's); elsewhere it would
 * renice the whole server, so it is left alone there.
 */
export function niceThisThread(nice: number): void {
  if (process.platform !== "linux") return;
  try {
    setPriority(nice);
  } catch {
    // Not allowed to lower it (a sandbox): the thread runs as it is.
  }
}
