// The Datastore's reader thread: reads the NDJSON records of uploads (record-pack.ts) off the event
// loop, niced as the writer thread is, so that an upload's parsing and checking, like its writing,
// yield the CPU to the requests the event loop serves. On a SQLite file it sends each pack straight
// to the writer thread (the port `attach` gives it), and the event loop gets only what it needs of
// it (ParkedRead); otherwise the pack itself is the answer.
import type { MessagePort } from "node:worker_threads";
import { niceThisThread, serveThread } from "../shared/thread.js";
import { buffersOf, type NdjsonRead, type ParkedRead, readNdjson, textOf } from "./record-pack.js";
import { writerNice } from "./writer.js";

niceThisThread(writerNice);
let writer: MessagePort | undefined;
serveThread({
  attach: (port: MessagePort) => {
    writer = port;
  },
  read: (pieces: Uint8Array[], first: number, dimension: number, maxDepth: number, park?: number): NdjsonRead | ParkedRead => {
    const read = readNdjson(pieces.length === 1 ? pieces[0] : Buffer.concat(pieces), first, dimension, maxDepth);
    if (park === undefined || !writer || !("pack" in read)) return read;
    const { pack, missing } = read;
    const texts = missing.map((i) => textOf(pack, i));
    // Posted before the answer: the writer has it, or it is on its way, when the event loop asks.
    // Its buffers move (they are no longer this thread's).
    writer.postMessage({ key: park, pack }, buffersOf(pack));
    return { parked: park, n: pack.n, dimension: pack.dimension, missing, texts };
  },
});
