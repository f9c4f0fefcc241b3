import { and, asc, eq, type SQL } from "drizzle-orm";
import { openServiceDatabase } from "../shared/db.js";
import { startThread } from "../shared/thread.js";
import { type EncodedCall, encodeCall, type NewCall, postgresBatchInsert, sqliteBatchInsert } from "./calls.js";
import * as schema from "./schema.js";
import * as pgSchema from "./schema.pg.js";

export type CallRow = typeof schema.calls.$inferSelect;
export { type EncodedCall, encodeCall, type NewCall };

/** CallFilter selects calls of one account. */
export interface CallFilter {
  accountId: string;
  sessionId?: string;
  runId?: string;
  workflowRefName?: string;
  offset: number;
  limit: number;
}

/** ModelProxyStore holds every query of the ModelProxy. */
export type ModelProxyStore = Awaited<ReturnType<typeof createModelProxyStore>>;

/**
 * createModelProxyStore opens the ModelProxy's database: a SQLite file (":memory:" for tests) or a
 * postgres:// URL. On a SQLite file, records are written by a thread of their own (calls-thread.ts)
 * with its own connection: a batch's inserts and commit took 2-3 ms of the thread that serves every
 * call, once a flush (bench/modelproxy.ts: the p99 of the proxy's added latency). On PostgreSQL the
 * pool's connections write, and this thread only encodes the batch.
 */
export async function createModelProxyStore(location: string, options: { poolSize?: number } = {}) {
  const db = await openServiceDatabase({ service: "modelproxy", location, schema, pgSchema, poolSize: options.poolSize });
  const { orm } = db;
  const { calls } = db.tables;
  // A ":memory:" database (tests) cannot be shared with a thread: it is written here.
  const writer =
    db.sqlite && location !== ":memory:"
      ? await startThread("ModelProxy's call writer", new URL("./calls-thread.ts", import.meta.url), { file: location })
      : undefined;
  let insertCalls: (rows: EncodedCall[]) => Promise<void>;
  if (writer) insertCalls = (rows) => writer.call("insertCalls", rows);
  else if (db.sqlite) {
    const insert = sqliteBatchInsert(db.sqlite);
    insertCalls = async (rows) => insert(rows);
  } else insertCalls = postgresBatchInsert(db.pool!);
  return {
    async close() {
      await writer?.close();
      await db.close();
    },
    /** insertCalls writes a batch (encodeCall's) in one transaction: all or nothing. A call recorded already is left as it is. */
    insertCalls,
    listCalls(filter: CallFilter): Promise<CallRow[]> {
      const where: SQL[] = [eq(calls.accountId, filter.accountId)];
      if (filter.sessionId) where.push(eq(calls.sessionId, filter.sessionId));
      if (filter.runId) where.push(eq(calls.runId, filter.runId));
      if (filter.workflowRefName) where.push(eq(calls.workflowRefName, filter.workflowRefName));
      return orm
        .select()
        .from(calls)
        .where(and(...where))
        .orderBy(asc(calls.createdAt), asc(calls.id))
        .limit(filter.limit)
        .offset(filter.offset);
    },
  };
}
