// Regenerates every service's drizzle-kit migrations, SQLite (from schema.ts, into migrations/) and
// PostgreSQL (from schema.pg.ts, into migrations-pg/): `npm run db:generate`.
import { execFileSync } from "node:child_process";
import { dialects, generateArgs, storedServices } from "./drizzle.js";

for (const service of storedServices) {
  for (const dialect of dialects) {
    execFileSync("npx", ["drizzle-kit", ...generateArgs(service, dialect)], { stdio: "inherit" });
  }
}
