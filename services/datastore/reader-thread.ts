// The Datastore's reader thread: reads the NDJSON records of uploads (record-pack.ts) off the event
// loop, niced as the writer thread is, so that an upload's parsing and checking, like its writing,
// yield the CPU to the requests the event loop serves.
import { niceThisThread, serveThread } from "../shared/thread.js";
import { readNdjson } from "./record-pack.js";
import { writerNice } from "./writer.js";

niceThisThread(writerNice);
serveThread({ read: readNdjson });
