// Regenerates every service's drizzle-kit migrations from its schema.ts: `npm run db:generate`.
import { execFileSync } from "node:child_process";

for (const service of ["registry", "executor", "modelproxy", "datastore"]) {
  execFileSync(
    "npx",
    [
      "drizzle-kit",
      "generate",
      "--dialect",
      "sqlite",
      "--schema",
      `services/${service}/schema.ts`,
      "--out",
      `services/${service}/migrations`,
    ],
    { stdio: "inherit" },
  );
}
