// Regenerates every service's drizzle-kit migrations from its schema.ts: `npm run db:generate`.
import { execFileSync } from "node:child_process";
import { generateArgs, storedServices } from "./drizzle.js";

for (const service of storedServices) {
  execFileSync("npx", ["drizzle-kit", ...generateArgs(service)], { stdio: "inherit" });
}
