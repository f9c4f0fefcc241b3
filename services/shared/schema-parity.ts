// Compile-time check that every service's PostgreSQL schema (schema.pg.ts) has the tables of its
// SQLite schema (schema.ts), under the same SQL names, and that a row read or written through
// drizzle has the same TypeScript shape in both: `tsc` fails here when they drift apart. The stores
// can then take either database without a type changing under them. (The column names, keys and
// indexes in SQL are compared at run time by test/postgres-migrations.test.ts.)
import type { Table } from "drizzle-orm";
import type * as datastore from "../datastore/schema.js";
import type * as datastorePg from "../datastore/schema.pg.js";
import type * as executor from "../executor/schema.js";
import type * as executorPg from "../executor/schema.pg.js";
import type * as modelproxy from "../modelproxy/schema.js";
import type * as modelproxyPg from "../modelproxy/schema.pg.js";
import type * as registry from "../registry/schema.js";
import type * as registryPg from "../registry/schema.pg.js";

/** Equal is true when A and B are the same type (not merely assignable either way). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/** Tables are a schema module's table exports. */
type Tables<M> = { [K in keyof M as M[K] extends Table ? K : never]: M[K] };

/**
 * PgOnly names the columns a PostgreSQL table has and its SQLite twin has not (keyed by table
 * export): they are left out of the comparison. Keep it short: each is a column SQLite does not
 * have because a virtual table does its job there, or that only PostgreSQL's search reads.
 */
interface PgOnly {
  records: "search" | "vectorBytes";
}
type Extra<K> = K extends keyof PgOnly ? PgOnly[K] : never;

/** Mismatch lists, per table export, what differs; `{}` when nothing does. */
type Mismatch<S, P> = {
  [K in keyof Tables<S> | keyof Tables<P> as K extends keyof Tables<S>
    ? K extends keyof Tables<P>
      ? Tables<S>[K] extends Table
        ? Tables<P>[K] extends Table
          ? Equal<Tables<S>[K]["_"]["name"], Tables<P>[K]["_"]["name"]> extends true
            ? Equal<Tables<S>[K]["$inferSelect"], Omit<Tables<P>[K]["$inferSelect"], Extra<K>>> extends true
              ? Equal<Tables<S>[K]["$inferInsert"], Omit<Tables<P>[K]["$inferInsert"], Extra<K>>> extends true
                ? never
                : K
              : K
            : K
          : K
        : K
      : K
    : K]: K extends keyof Tables<S> ? (K extends keyof Tables<P> ? "differs" : "missing in schema.pg.ts") : "missing in schema.ts";
};

/** Same accepts only `true`: a service whose schemas differ fails to compile, naming its tables. */
type Same<M> = keyof M extends never ? true : M;

export const parity: {
  registry: Same<Mismatch<typeof registry, typeof registryPg>>;
  executor: Same<Mismatch<typeof executor, typeof executorPg>>;
  modelproxy: Same<Mismatch<typeof modelproxy, typeof modelproxyPg>>;
  datastore: Same<Mismatch<typeof datastore, typeof datastorePg>>;
} = { registry: true, executor: true, modelproxy: true, datastore: true };
