import { and, asc, eq, type SQL } from "drizzle-orm";
import { openDatabase } from "../shared/db.js";
import * as schema from "./schema.js";

const migrationsFolder = new URL("./migrations", import.meta.url).pathname;

export type CallRow = typeof schema.calls.$inferSelect;
export type NewCall = typeof schema.calls.$inferInsert;

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
export type ModelProxyStore = ReturnType<typeof createModelProxyStore>;

/** createModelProxyStore opens the ModelProxy's database (":memory:" for tests). */
export function createModelProxyStore(file: string) {
  const db = openDatabase({ file, migrationsFolder, schema });
  const { orm } = db;
  const { calls } = schema;
  const insertMany = db.sqlite.transaction((rows: NewCall[]) => {
    for (const row of rows) orm.insert(calls).values(row).onConflictDoNothing().run();
  });
  return {
    close: () => db.close(),
    /** insertCalls writes a batch in one transaction: all or nothing. */
    insertCalls(rows: NewCall[]): void {
      insertMany(rows);
    },
    listCalls(filter: CallFilter): CallRow[] {
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
        .offset(filter.offset)
        .all();
    },
  };
}
