// What `npm run db:generate` runs for each service, and what the migrations test checks against.

import { type Dialect, migrationsDir } from "../services/shared/dialects.js";

export { type Dialect, dialects, migrationsDir, storedServices } from "../services/shared/dialects.js";

/**
 * generateArgs are drizzle-kit's arguments that write a service's migrations for a dialect into
 * `out` (relative to the repository: drizzle-kit mishandles an absolute one): from schema.ts for
 * SQLite, from schema.pg.ts for PostgreSQL.
 */
export function generateArgs(service: string, dialect: Dialect, out = migrationsDir(service, dialect)): string[] {
  const schema = dialect === "sqlite" ? `services/${service}/schema.ts` : `services/${service}/schema.pg.ts`;
  return ["generate", "--dialect", dialect, "--schema", schema, "--out", out];
}
