import { execFile } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { dialects, generateArgs, migrationsDir, storedServices } from "../scripts/drizzle.js";

// Every service's committed migrations must be what its schemas say, for SQLite (schema.ts,
// migrations/) and PostgreSQL (schema.pg.ts, migrations-pg/): drizzle-kit, run against a copy of
// them, must find nothing to migrate. A schema change without `npm run db:generate` fails here.

const run = promisify(execFile);
const repo = new URL("../", import.meta.url).pathname;

describe("migrations", () => {
  for (const service of storedServices) {
    for (const dialect of dialects) {
      it(`${service} (${dialect}): the committed migrations match the schema`, async () => {
        // drizzle-kit takes its --out relative to the working directory (it mishandles an absolute one).
        const out = join("node_modules", ".cache", "shaker-drift", `${service}-${dialect}`);
        rmSync(join(repo, out), { recursive: true, force: true });
        mkdirSync(join(repo, out), { recursive: true });
        cpSync(join(repo, migrationsDir(service, dialect)), join(repo, out), { recursive: true });
        const before = readdirSync(join(repo, out)).sort();
        const { stdout } = await run(
          process.execPath,
          [join(repo, "node_modules", "drizzle-kit", "bin.cjs"), ...generateArgs(service, dialect, out)],
          { cwd: repo },
        );
        expect(readdirSync(join(repo, out)).sort(), `drizzle-kit wrote a migration: run npm run db:generate\n${stdout}`).toEqual(before);
        expect(stdout).toContain("No schema changes");
      }, 60_000);
    }
  }
});
