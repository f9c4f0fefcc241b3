#!/usr/bin/env node
// The `shaker` command, on Node 20 without a build step. Every command but `serve` and `keys` runs
// from the light CLI, a bundle of cli/ that cli/prebuilt.js builds with esbuild on first use and
// after a change of its sources; those two (and any command when the bundle cannot be had) load the
// TypeScript sources through tsx.
import { prebuiltCli } from "../cli/prebuilt.js";

const argv = process.argv.slice(2);
let cli = await prebuiltCli();
if (!cli || cli.needsSources(argv)) {
  const { register } = await import("tsx/esm/api");
  register();
  cli = await import("../cli/main.ts");
}
process.exit(await cli.main(argv, cli.processIo()));
