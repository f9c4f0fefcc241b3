import { type ChildProcess, spawn } from "node:child_process";
import type { Readable, Writable } from "node:stream";

/** harnessDir holds the Python package `shaker` the workers import. */
export const harnessDir = new URL("./harness", import.meta.url).pathname;
/** Versions whose source a worker was sent are remembered up to this many; the worker's own cache
 * may forget sooner, and then answers "need source" (PROTOCOL.md): nothing has to agree on a size. */
const maxRememberedVersions = 4096;

/** WorkerEvent is one frame about a run, from its worker or its child process. */
export type WorkerEvent =
  | { t: "started"; pid: number }
  | { t: "emit"; seq: number; value: unknown; time: number }
  | { t: "log"; level: string; message: string; fields: Record<string, unknown>; time: number }
  | { t: "output"; stream: "stdout" | "stderr"; data: string }
  | { t: "result"; output: unknown; usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } }
  | { t: "error"; type: string; message: string; traceback: string }
  | { t: "exit"; code: number; signal: number; output_truncated: boolean; memory_exceeded?: boolean; worker_died?: boolean };

const str = (v: unknown): string => (typeof v === "string" ? v : v === undefined || v === null ? "" : JSON.stringify(v));
/** A frame's time: seconds since the epoch, from 1970 to 2286; anything else is now. */
const when = (v: unknown): number => (typeof v === "number" && v >= 0 && v < 1e10 ? v : Date.now() / 1000);
const int = (v: unknown): number => (Number.isSafeInteger(v) && (v as number) >= 0 ? (v as number) : 0);
const json = (v: unknown): unknown => (v === undefined ? null : v);
const record = (v: unknown): Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};

/**
 * toEvent builds the event of a frame from its kind byte and its JSON, taking each field as the type
 * the Executor expects: a run writes the JSON of its own frames (emit, log, result, error), so none
 * of it is trusted to be of the right shape. The kind is the frame's byte, never a field of the JSON.
 */
function toEvent(kind: WorkerEvent["t"], f: Record<string, unknown>): WorkerEvent {
  switch (kind) {
    case "emit":
      return { t: kind, seq: int(f.seq), value: json(f.value), time: when(f.time) };
    case "log":
      return { t: kind, level: str(f.level), message: str(f.message), fields: record(f.fields), time: when(f.time) };
    case "result": {
      const u = record(f.usage);
      const usage = { prompt_tokens: int(u.prompt_tokens), completion_tokens: int(u.completion_tokens), total_tokens: int(u.total_tokens) };
      return { t: kind, output: json(f.output), usage };
    }
    case "error":
      return { t: kind, type: str(f.type) || "Error", message: str(f.message), traceback: str(f.traceback) };
    case "output":
      return { t: kind, stream: f.stream === "stderr" ? "stderr" : "stdout", data: str(f.data) };
    case "started":
      return { t: kind, pid: int(f.pid) };
    case "exit":
      return {
        t: kind,
        code: int(f.code),
        signal: int(f.signal),
        output_truncated: f.output_truncated === true,
        memory_exceeded: f.memory_exceeded === true,
      };
  }
}

/** The kind byte that starts each frame about a run (harness/shaker/frames.py, PROTOCOL.md). */
const kinds: Record<number, WorkerEvent["t"] | "need_source" | undefined> = {
  69: "emit", // E
  76: "log", // L
  82: "result", // R
  88: "error", // X
  83: "started", // S
  81: "exit", // Q
  79: "output", // O
  78: "need_source", // N
};

/** RunJob is one run handed to the pool. */
export interface RunJob {
  runId: string;
  versionId: string;
  source: string;
  /** payload is what the child's ctx is built from (input, messages, secrets, token, limits, ...). */
  payload: Record<string, unknown>;
  /** onEvent receives every frame of the run, `exit` last, with the frame's size in bytes. */
  onEvent: (event: WorkerEvent, bytes: number) => void;
}

/** RunHandle controls a run in the pool. */
export interface RunHandle {
  /** kill sends SIGKILL to the run's process group (now, or as soon as it has one). */
  kill(): void;
  /**
   * pause stops reading the run's frames until resume: once the pipe between the child and its
   * worker is full, the child blocks in ctx.emit. Other runs of the same worker keep flowing.
   */
  pause(): void;
  resume(): void;
}

interface Active {
  job: RunJob;
  /** frame is the run's frame to the worker until it started (a "need source" answer resends it with the source). */
  frame: string | undefined;
  pid: number | undefined;
  killed: boolean;
  paused: boolean;
}

interface Worker {
  proc: ChildProcess;
  toWorker: Writable;
  active: Map<string, Active>;
  versions: Set<string>;
  alive: boolean;
}

/** Options of createWorkerPool. */
export interface WorkerPoolOptions {
  /** python is the interpreter. */
  python: string;
  /** size is the number of long-lived workers. */
  size: number;
  /** maxOutputBytes caps a run's captured stdout and stderr. */
  maxOutputBytes?: number;
  /** log reports worker-level trouble (a worker's own stderr, deaths). */
  log?: (message: string) => void;
  /**
   * workerEnv are the variables that describe the confinement of runs (isolation.ts): the same for
   * every worker but `SHAKER_CONFINEMENT`'s worker slot, which workerSlotEnv fills in.
   */
  confinementEnv?: (slot: number) => Record<string, string>;
}

/** WorkerPool runs jobs in long-lived Python workers, one fork() per run. */
export interface WorkerPool {
  run(job: RunJob): RunHandle;
  /** pids lists the workers' process ids. */
  pids(): number[];
  /** activeRuns is the number of runs in the pool. */
  activeRuns(): number;
  close(): Promise<void>;
}

/**
 * frameReader cuts the worker's stream into `run id \n kind JSON` frames in linear time: chunks are
 * kept in a list until a frame is complete, so a large frame arriving in many chunks is copied once.
 */
function frameReader(stream: Readable, onFrame: (runId: string, kind: number, json: Buffer) => void): void {
  let chunks: Buffer[] = [];
  let buffered = 0;
  let need = 4; // bytes needed before anything more can be decoded
  stream.on("data", (chunk: Buffer) => {
    chunks.push(chunk);
    buffered += chunk.length;
    if (buffered < need) return;
    let buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
    let offset = 0;
    while (buf.length - offset >= 4) {
      const n = buf.readUInt32BE(offset);
      if (buf.length - offset - 4 < n) {
        need = n + 4;
        break;
      }
      const frame = buf.subarray(offset + 4, offset + 4 + n);
      offset += 4 + n;
      need = 4;
      const nl = frame.indexOf(10);
      onFrame(frame.subarray(0, nl).toString("utf8"), frame[nl + 1], frame.subarray(nl + 2));
    }
    buf = buf.subarray(offset);
    chunks = buf.length > 0 ? [buf] : [];
    buffered = buf.length;
  });
}

function encodeFrame(text: string): Buffer {
  const n = Buffer.byteLength(text);
  const frame = Buffer.allocUnsafe(4 + n);
  frame.writeUInt32BE(n, 0);
  frame.write(text, 4);
  return frame;
}

/**
 * The server's environment variables a run may see: what a Python process needs to start and behave
 * (its home and libraries, locale, time zone, paths and CA bundles), and the worker's own tuning
 * (SHAKER_SPARES), never the rest. The server's own environment holds its secrets (upstream API keys,
 * SHAKER_API_KEY); a workflow's own variables come from its version's `env`.
 */
const passedToRuns =
  /^(PATH|HOME|LANG|LANGUAGE|LC_[A-Z]+|TZ|TMPDIR|PYTHONHOME|PYTHONUTF8|PYTHONIOENCODING|LD_LIBRARY_PATH|SSL_CERT_FILE|SSL_CERT_DIR|SHAKER_SPARES|SHAKER_MAX_FRAME_BYTES)$/;

function workerEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && passedToRuns.test(k)) out[k] = v;
  return out;
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // The group is already gone.
  }
}

/** createWorkerPool starts `size` Python workers with the harness preloaded. */
export function createWorkerPool(options: WorkerPoolOptions): WorkerPool {
  const workers: Worker[] = [];
  let closing = false;
  const log = options.log ?? ((m: string) => process.stderr.write(`${m}\n`));

  function spawnWorker(slot: number): Worker {
    const proc = spawn(options.python, ["-B", "-s", "-u", "-m", "shaker.worker"], {
      cwd: harnessDir,
      env: {
        ...workerEnv(process.env),
        PYTHONPATH: harnessDir,
        PYTHONDONTWRITEBYTECODE: "1",
        SHAKER_MAX_OUTPUT_BYTES: String(options.maxOutputBytes ?? 1024 * 1024),
        ...options.confinementEnv?.(slot),
      },
      stdio: ["ignore", "inherit", "pipe", "pipe", "pipe"],
    });
    const worker: Worker = {
      proc,
      toWorker: proc.stdio[3] as Writable,
      active: new Map(),
      versions: new Set(),
      alive: true,
    };
    worker.toWorker.on("error", () => {});
    proc.stderr!.on("data", (b: Buffer) => log(`[python worker ${proc.pid}] ${b.toString("utf8").trimEnd()}`));
    frameReader(proc.stdio[4] as Readable, (runId, kindByte, body) => {
      const active = worker.active.get(runId);
      const kind = kinds[kindByte];
      if (!active || kind === undefined) return;
      if (kind === "need_source") {
        // The worker forgot this version (its cache is full): the same run again, with the source.
        worker.versions.delete(active.job.versionId);
        send(worker, active);
        return;
      }
      let fields: unknown;
      try {
        fields = JSON.parse(body.toString("utf8"));
      } catch {
        return;
      }
      // A run writes its frames' JSON: what is not an object is not one of its frames.
      if (typeof fields !== "object" || fields === null || Array.isArray(fields)) return;
      const event = toEvent(kind, fields as Record<string, unknown>);
      if (event.t === "started") {
        active.pid = event.pid;
        active.frame = undefined;
        if (active.killed) killGroup(event.pid);
      }
      if (event.t === "exit") {
        worker.active.delete(runId);
      }
      try {
        active.job.onEvent(event, body.length);
      } catch (e) {
        // Whatever a run wrote, it must not take the server down: its run is killed instead.
        log(`run ${runId}: its ${event.t} frame could not be handled (${(e as Error).message}); killing the run`);
        if (active.pid) killGroup(active.pid);
      }
    });
    proc.on("exit", (code, signal) => {
      worker.alive = false;
      // Runs the worker held cannot report any more: end them with a clear error, and their processes.
      for (const [, active] of worker.active) {
        if (active.pid) killGroup(active.pid);
        active.job.onEvent(
          {
            t: "error",
            type: "WorkerDied",
            message: `the Python worker running this workflow died (${signal ?? `exit ${code}`})`,
            traceback: "",
          },
          0,
        );
        // worker_died is never read from a frame: only the pool says it, and the run is resumed.
        active.job.onEvent({ t: "exit", code: 1, signal: 0, output_truncated: false, worker_died: true }, 0);
      }
      worker.active.clear();
      if (!closing) {
        log(`python worker ${proc.pid} died (${signal ?? `exit ${code}`}); starting another`);
        workers[slot] = spawnWorker(slot);
      }
    });
    return worker;
  }

  /** send writes a run to its worker: its source too when this worker may not have it. */
  function send(worker: Worker, active: Active): void {
    const { job } = active;
    const head: Record<string, unknown> = { t: "run", id: job.runId, version_id: job.versionId };
    if (!worker.versions.has(job.versionId)) {
      head.source = job.source;
      if (worker.versions.size >= maxRememberedVersions) worker.versions.clear();
      worker.versions.add(job.versionId);
    }
    // The payload follows the header as it is: the worker reads only the header and hands the
    // payload's bytes to the child, which is the only process that parses it.
    active.frame ??= JSON.stringify(job.payload);
    worker.toWorker.write(encodeFrame(`${JSON.stringify(head)}\n${active.frame}`));
  }

  for (let i = 0; i < options.size; i++) workers.push(spawnWorker(i));

  return {
    run(job) {
      let worker = workers[0];
      for (const w of workers) if (w.alive && (!worker.alive || w.active.size < worker.active.size)) worker = w;
      const active: Active = { job, frame: undefined, pid: undefined, killed: false, paused: false };
      worker.active.set(job.runId, active);
      send(worker, active);
      // Flow control: a frame to the worker, only while the run is in it (a finished run has nothing to hold).
      const control = (t: "pause" | "resume") => {
        if (worker.alive && worker.active.get(job.runId) === active)
          worker.toWorker.write(encodeFrame(JSON.stringify({ t, id: job.runId })));
      };
      const resume = () => {
        if (!active.paused) return;
        active.paused = false;
        control("resume");
      };
      return {
        kill() {
          active.killed = true;
          if (active.pid) killGroup(active.pid);
          // A paused run's worker must read the dead child's frames to the end to report its exit.
          resume();
        },
        pause() {
          if (active.paused || active.killed) return;
          active.paused = true;
          control("pause");
        },
        resume,
      };
    },
    pids: () => workers.map((w) => w.proc.pid ?? 0),
    activeRuns: () => workers.reduce((n, w) => n + w.active.size, 0),
    async close() {
      closing = true;
      await Promise.all(
        workers.map(
          (w) =>
            new Promise<void>((resolve) => {
              for (const [, a] of w.active) if (a.pid) killGroup(a.pid);
              if (!w.alive) return resolve();
              w.proc.once("exit", () => resolve());
              w.toWorker.end();
              setTimeout(() => w.proc.kill("SIGKILL"), 2000).unref();
            }),
        ),
      );
    },
  };
}
