// What `npm run db:generate` runs for each service, and what the migrations test checks against.

/** The services with a database of their own. */
export const storedServices = ["registry", "executor", "modelproxy", "datastore"] as const;

/** generateArgs are drizzle-kit's arguments that write a service's SQLite migrations into `out` (relative to the repository). */
export function generateArgs(service: string, out = `services/${service}/migrations`): string[] {
  return ["generate", "--dialect", "sqlite", "--schema", `services/${service}/schema.ts`, "--out", out];
}
