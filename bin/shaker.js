#!/usr/bin/env node
// The `shaker` command. Loads the TypeScript sources through tsx, so it runs on Node 20 without a build.
import { register } from "tsx/esm/api";

register();
const { main, processIo } = await import("../cli/main.ts");
process.exit(await main(process.argv.slice(2), processIo()));
