// Types of cli/prebuilt.js, which is plain JavaScript because it runs before tsx.
import type { Metafile } from "esbuild";

/** outDir holds the bundle and its manifest (node_modules/.cache/shaker-cli). */
export const outDir: string;
/** bundlePath is the light CLI's bundle. */
export const bundlePath: string;
/** build bundles cli/main.ts and records the stamps of its sources; it answers esbuild's metafile. */
export function build(): Promise<Metafile>;
/** prebuiltCli imports the light CLI, building it first when missing or stale; null when it cannot. */
export function prebuiltCli(): Promise<typeof import("./main.ts") | null>;
