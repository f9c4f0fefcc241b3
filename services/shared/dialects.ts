// The names of the databases the services keep their tables in, without their drivers: read by the
// configuration and the light CLI, which load neither SQLite nor PostgreSQL's client.

/** The services that keep state, each in its own SQLite file or PostgreSQL schema. */
export const storedServices = ["registry", "executor", "modelproxy", "datastore"] as const;
export type StoredService = (typeof storedServices)[number];

/** The two databases a store runs on. */
export const dialects = ["sqlite", "postgresql"] as const;
export type Dialect = (typeof dialects)[number];

/** migrationsDir is where a service's committed migrations for a dialect are, relative to the repository. */
export function migrationsDir(service: string, dialect: Dialect): string {
  return dialect === "sqlite" ? `services/${service}/migrations` : `services/${service}/migrations-pg`;
}

/** isPostgresUrl tells a PostgreSQL URL from a SQLite file. */
export function isPostgresUrl(location: string): boolean {
  return /^postgres(ql)?:\/\//.test(location);
}
