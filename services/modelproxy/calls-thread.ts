// The ModelProxy's call writer on a SQLite file (see store.ts): its own connection, every batch of
// call records in one transaction.
import { workerData } from "node:worker_threads";
import { sqliteConnection } from "../shared/db.js";
import { serveThread } from "../shared/thread.js";
import { type EncodedCall, sqliteBatchInsert } from "./calls.js";

const sqlite = sqliteConnection((workerData as { file: string }).file);
const insert = sqliteBatchInsert(sqlite);
serveThread({
  insertCalls: (rows: EncodedCall[]) => {
    insert(rows);
  },
  close: () => sqlite.close(),
});
