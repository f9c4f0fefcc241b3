import { and, desc, eq, inArray, type SQL } from "drizzle-orm";
import { openDatabase } from "../shared/db.js";
import * as schema from "./schema.js";

const migrationsFolder = new URL("./migrations", import.meta.url).pathname;

export type RunRow = typeof schema.runs.$inferSelect;
export type NewRun = typeof schema.runs.$inferInsert;

/** RunFilter selects runs of one account. */
export interface RunFilter {
  accountId: string;
  workflowRefName?: string;
  sessionId?: string;
  status?: number;
  offset: number;
  limit: number;
}

/** ExecutorStore holds every query of the Executor. */
export type ExecutorStore = ReturnType<typeof createExecutorStore>;

/** createExecutorStore opens the Executor's database (":memory:" for tests). */
export function createExecutorStore(file: string) {
  const db = openDatabase({ file, migrationsFolder, schema });
  const { orm } = db;
  const { runs } = schema;
  return {
    close: () => db.close(),
    insertRun(row: NewRun): void {
      orm.insert(runs).values(row).run();
    },
    updateRun(id: string, fields: Partial<NewRun>): void {
      orm.update(runs).set(fields).where(eq(runs.id, id)).run();
    },
    run(accountId: string, id: string): RunRow | undefined {
      return orm.select().from(runs).where(and(eq(runs.id, id), eq(runs.accountId, accountId))).get();
    },
    listRuns(filter: RunFilter): RunRow[] {
      const where: SQL[] = [eq(runs.accountId, filter.accountId)];
      if (filter.workflowRefName) where.push(eq(runs.workflowRefName, filter.workflowRefName));
      if (filter.sessionId) where.push(eq(runs.sessionId, filter.sessionId));
      if (filter.status) where.push(eq(runs.status, filter.status));
      return orm
        .select()
        .from(runs)
        .where(and(...where))
        .orderBy(desc(runs.createdAt))
        .limit(filter.limit)
        .offset(filter.offset)
        .all();
    },
    /** failRunsInFlight marks runs left queued or running by a previous process as failed. */
    failRunsInFlight(statuses: number[], failed: number, error: { type: string; message: string; traceback: string }): number {
      return orm
        .update(runs)
        .set({ status: failed, error, finishedAt: Date.now() })
        .where(inArray(runs.status, statuses))
        .run().changes;
    },
    integrityCheck(): string {
      return String(db.sqlite.pragma("integrity_check", { simple: true }));
    },
  };
}
