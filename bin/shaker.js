#!/usr/bin/env node
// The `shaker` command. Loads the TypeScript sources through tsx, so it runs on Node 20 without a build.
import { register } from "tsx/esm/api";

register();
await import("../cli/main.ts");
