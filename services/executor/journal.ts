import { createHash } from "node:crypto";
import { type DescMessage, fromJsonString, type MessageShape, toBinary, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor, type StreamResponse, type UnaryResponse } from "@connectrpc/connect";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import type { Auth } from "../shared/auth.js";
import type { JournalEntry } from "./store.js";

/** callSeqHeader carries a ctx call's sequence number within its run (the harness's RpcClient sets it). */
export const callSeqHeader = "shaker-call-seq";

/** replayedHeader marks, among the interceptors, an answer that came from the journal. */
export const replayedHeader = "shaker-replayed";

/** JournalStore is what the journal keeps its entries in: the Executor's store. */
export interface JournalStore {
  journalEntry(runId: string, seq: number): Promise<JournalEntry | undefined>;
  /** writeJournal settles once the entry is durable. */
  writeJournal(entry: JournalEntry): Promise<void>;
  truncateJournal(runId: string, fromSeq: number): Promise<void>;
}

/** RunJournal is one run's journal state, kept with the run while it is in flight. */
export interface RunJournal {
  /** replaying is true while a resumed run's calls may still find their results in the journal. */
  replaying: boolean;
  /** secrets are the run's secret values (its ancestors' too): a call that holds one is not journaled. */
  secrets: readonly Buffer[];
  /** warnings receives the warning of a call that does not match its journal entry. */
  warnings: string[];
  /** unjournaled counts the calls not journaled because they held a secret value. */
  unjournaled: number;
  /** wrote is true once anything was journaled: the run's entries are deleted when it ends. */
  wrote: boolean;
  /** bytes is what the run's journal holds; past maxJournalBytes, calls are no longer journaled. */
  bytes: number;
}

/** A run journals at most this many bytes of answers; the calls beyond are made again on resume (and counted). */
export const maxJournalBytes = 64 * 1024 * 1024;

/** newRunJournal is the journal state of a run's attempt: a resumed attempt (attempt > 1) replays. */
export function newRunJournal(attempt: number, secretValues: readonly string[]): RunJournal {
  return {
    replaying: attempt > 1,
    secrets: secretValues.filter((v) => v.length > 0).map((v) => Buffer.from(v)),
    warnings: [],
    unjournaled: 0,
    wrote: attempt > 1,
    bytes: 0,
  };
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("base64url");

/** pack joins messages, each after its 4-byte big-endian length; unpack splits them again. */
export function pack(messages: readonly Uint8Array[]): Buffer {
  const parts: Buffer[] = [];
  for (const m of messages) {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(m.length);
    parts.push(head, Buffer.from(m.buffer, m.byteOffset, m.length));
  }
  return Buffer.concat(parts);
}

export function unpack(packed: Buffer | null): Uint8Array[] {
  const messages: Uint8Array[] = [];
  if (!packed) return messages;
  for (let at = 0; at + 4 <= packed.length; ) {
    const n = packed.readUInt32BE(at);
    messages.push(packed.subarray(at + 4, at + 4 + n));
    at += 4 + n;
  }
  return messages;
}

/**
 * holdsSecret is true when a message holds a secret value: it looks in the messages' binary
 * encodings, where strings and bytes are verbatim (their JSON would escape or base64 them). Only
 * runs given secrets pay for the encoding.
 */
function holdsSecret(
  secrets: readonly Buffer[],
  schema: { input: DescMessage; output: DescMessage },
  request: MessageShape<DescMessage>,
  answers: readonly MessageShape<DescMessage>[],
): boolean {
  if (secrets.length === 0) return false;
  const encodings = [toBinary(schema.input, request), ...answers.map((m) => toBinary(schema.output, m))];
  return encodings.some((e) => {
    const b = Buffer.from(e.buffer, e.byteOffset, e.length);
    return secrets.some((s) => b.includes(s));
  });
}

/** Options of createJournalInterceptor. */
export interface JournalOptions {
  store: JournalStore;
  auth: Auth;
  /** runJournal is the journal state of a run in flight in this process, or undefined. */
  runJournal: (runId: string) => RunJournal | undefined;
}

/**
 * createJournalInterceptor journals the ctx calls of runs and replays them for resumed runs. It sits
 * on the services' side of the socket runs call through, so every service's answer is journaled in
 * one place, before the run's process receives it: a crash after the write loses nothing, a crash
 * before it loses a call that no process ever saw.
 *
 * A call takes part when it comes with a run's token and a `shaker-call-seq` header. A resumed run's
 * call whose sequence number, method and request (SHA-256 of its JSON) match the journal
 * gets the journaled answer (or error) without reaching the service. The first call that does not
 * match ends the replay: the journal is cut there, a warning names the call, and from then on every
 * call is live (and journaled). A call whose request or answer holds a secret value is journaled
 * without either: a resumed run makes it again.
 */
export function createJournalInterceptor(options: JournalOptions): Interceptor {
  const { store, auth } = options;
  return (next) => async (req) => {
    const seqText = req.header.get(callSeqHeader);
    if (seqText === null) return await next(req);
    const seq = Number(seqText);
    if (!Number.isSafeInteger(seq) || seq < 0) throw new ConnectError(`${callSeqHeader} must be a whole number`, Code.InvalidArgument);
    const identity = await auth.identify(req.header);
    const journal = identity.kind === "run" ? options.runJournal(identity.claims.run) : undefined;
    if (identity.kind !== "run" || !journal) return await next(req);
    const runId = identity.claims.run;
    const method = `${req.service.typeName}/${req.method.name}`;
    // A server-streaming call's single request arrives as a stream of one.
    let input: MessageShape<DescMessage>;
    if (req.stream) {
      const it = req.message[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done) throw new ConnectError("protocol error: missing input message", Code.InvalidArgument);
      input = first.value;
      req = { ...req, message: createAsyncIterable([input]) };
    } else input = req.message;
    // JSON, not the binary encoding: protobuf-es writes it several times faster for Struct-heavy
    // messages (a model call's body), and it is as deterministic (fields in order, keys as given).
    const requestHash = sha256(Buffer.from(toJsonString(req.method.input, input)));

    if (journal.replaying) {
      const entry = await store.journalEntry(runId, seq);
      if (entry && entry.method === method && (entry.journaled === 0 || entry.requestHash === requestHash)) {
        if (entry.journaled === 1) return replayed(req, entry);
        // An unjournaled call (it held a secret) is made again, below.
      } else if (entry) {
        journal.replaying = false;
        await store.truncateJournal(runId, seq);
        journal.warnings.push(
          `replay stopped at ctx call ${seq} (${method}): it is not the call the journal holds there (${entry.method}` +
            `${entry.method === method ? " with another request" : ""}); the run went on live from that call`,
        );
      }
    }

    const output = req.method.output;
    const write = async (answers: MessageShape<DescMessage>[], error: ConnectError | undefined) => {
      const messages = answers.map((m) => Buffer.from(toJsonString(output, m)));
      const size = messages.reduce((n, m) => n + m.length + 4, 0);
      const full = journal.bytes + size > maxJournalBytes;
      if (full && !journal.warnings.some((w) => w.startsWith("the journal is full"))) {
        journal.warnings.push(`the journal is full (${maxJournalBytes} bytes of answers): ctx calls from ${seq} on were not journaled`);
      }
      // A call whose request or answer holds a secret value (or that does not fit) keeps no trace but its place.
      const secret = full || holdsSecret(journal.secrets, req.method, input, answers);
      if (secret) journal.unjournaled++;
      else journal.bytes += size;
      journal.wrote = true;
      await store.writeJournal({
        runId,
        seq,
        method,
        requestHash: secret ? "" : requestHash,
        journaled: secret ? 0 : 1,
        messages: secret ? null : pack(messages),
        error: error && !secret ? { code: error.code, message: error.rawMessage } : null,
        createdAt: Date.now(),
      });
    };
    // A call cut short by its caller (its process died, the run ended) has no result to keep.
    const keep = (e: unknown) => {
      const error = ConnectError.from(e);
      return req.signal.aborted || error.code === Code.Canceled ? undefined : error;
    };
    let res: UnaryResponse | StreamResponse;
    try {
      res = await next(req);
    } catch (e) {
      const error = keep(e);
      if (error) await write([], error);
      throw e;
    }
    if (!res.stream) {
      await write([res.message], undefined);
      return res;
    }
    const source = res.message;
    async function* journaled() {
      const messages: MessageShape<DescMessage>[] = [];
      try {
        for await (const m of source) {
          messages.push(m);
          yield m;
        }
      } catch (e) {
        const error = keep(e);
        if (error) await write(messages, error);
        throw e;
      }
      await write(messages, undefined);
    }
    return { ...res, message: journaled() };
  };
}

/** replayed is the journaled answer of a call, as the service gave it. */
function replayed(req: Parameters<Parameters<Interceptor>[0]>[0], entry: JournalEntry): UnaryResponse | StreamResponse {
  const output = req.method.output;
  const messages = unpack(entry.messages).map((m) => fromJsonString(output, Buffer.from(m).toString()));
  const error = entry.error ? new ConnectError(entry.error.message, entry.error.code as Code) : undefined;
  const common = { service: req.service, header: new Headers({ [replayedHeader]: "1" }), trailer: new Headers() };
  if (!req.stream) {
    if (error) throw error;
    return { ...common, stream: false, method: req.method, message: messages[0] } as UnaryResponse;
  }
  async function* again() {
    yield* messages;
    if (error) throw error;
  }
  return { ...common, stream: true, method: req.method, message: again() } as StreamResponse;
}
