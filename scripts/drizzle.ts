// What `npm run db:generate` runs for each service, and what the migrations test checks against.

/** The services with a database of their own. */
export const storedServices = ["registry", "executor", "modelproxy", "datastore"] as const;

/** The databases every service's schema is kept for: SQLite files, and PostgreSQL (SHAKER_DATABASE_URL). */
export const dialects = ["sqlite", "postgresql"] as const;
export type Dialect = (typeof dialects)[number];

/** migrationsDir is where a service's committed migrations for a dialect are, relative to the repository. */
export function migrationsDir(service: string, dialect: Dialect): string {
  return dialect === "sqlite" ? `services/${service}/migrations` : `services/${service}/migrations-pg`;
}

/**
 * generateArgs are drizzle-kit's arguments that write a service's migrations for a dialect into
 * `out` (relative to the repository: drizzle-kit mishandles an absolute one): from schema.ts for
 * SQLite, from schema.pg.ts for PostgreSQL.
 */
export function generateArgs(service: string, dialect: Dialect, out = migrationsDir(service, dialect)): string[] {
  const schema = dialect === "sqlite" ? `services/${service}/schema.ts` : `services/${service}/schema.pg.ts`;
  return ["generate", "--dialect", dialect, "--schema", schema, "--out", out];
}
