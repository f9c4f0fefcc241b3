// The light CLI: cli/main.ts and the modules it imports statically, bundled by esbuild (which tsx
// brings) into one plain JavaScript file, so a command that only talks to a server starts in
// about the time Node itself takes, instead of paying tsx's registration (~0.2 s) and the server's
// modules (~2 s). Plain JavaScript, because it runs before anything can compile TypeScript.
//
// The bundle is built on first use and again whenever one of its sources changes (their mtimes and
// sizes are kept next to it), into node_modules/.cache/shaker-cli/: no build step after `npm install`
// and nothing to commit. When it cannot be built or loaded, prebuiltCli answers null and
// bin/shaker.js loads the sources through tsx, as it does for `serve` and `keys` (needsSources).
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const self = fileURLToPath(import.meta.url);
/** outDir holds the bundle and its manifest. */
export const outDir = join(root, "node_modules", ".cache", "shaker-cli");
export const bundlePath = join(outDir, "main.mjs");
const manifestPath = join(outDir, "main.json");

/** stamp is what says a source changed: its modification time and size. */
function stamp(file) {
  const s = statSync(join(root, file));
  return `${s.mtimeMs}:${s.size}`;
}

/** fresh says the bundle was built from the sources as they are now. */
function fresh() {
  let manifest;
  try {
    manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
  } catch {
    return false;
  }
  try {
    return Object.entries(manifest.inputs).every(([file, s]) => stamp(file) === s);
  } catch {
    return false;
  }
}

async function loadEsbuild() {
  try {
    return await import("esbuild");
  } catch {
    // Not hoisted next to this package: the copy tsx depends on.
    const fromTsx = createRequire(fileURLToPath(import.meta.resolve("tsx")));
    return await import(pathToFileURL(fromTsx.resolve("esbuild")).href);
  }
}

/**
 * sourcesPlugin adapts the repository's TypeScript to living in one file elsewhere:
 * - the modules main.ts imports only for `serve` and `keys` are left out (a stub that says so);
 * - `import.meta.url` keeps naming each module's own source file, for the paths made from it;
 * - the repository's modules outside cli/ count as free of side effects, so what the light commands
 *   take from them (a constant, an enum) comes without the rest of their imports (protobuf, connect).
 */
const sourcesPlugin = {
  name: "shaker-sources",
  setup(build) {
    build.onResolve({ filter: /^\.\/(serve|keys)\.js$/ }, (args) =>
      args.importer === join(root, "cli", "main.ts") ? { path: args.path, namespace: "sources-only" } : undefined,
    );
    build.onLoad({ filter: /.*/, namespace: "sources-only" }, (args) => ({
      contents: `throw new Error(${JSON.stringify(`${args.path} is not part of the prebuilt CLI (bin/shaker.js runs this command from the sources)`)});`,
      loader: "js",
    }));
    build.onResolve({ filter: /^\.\.?\// }, (args) => {
      const js = resolve(args.resolveDir, args.path);
      const path = js.endsWith(".js") && existsSync(js.replace(/\.js$/, ".ts")) ? js.replace(/\.js$/, ".ts") : js;
      if (!path.startsWith(root) || path.includes(`${sep}node_modules${sep}`)) return undefined;
      return { path, sideEffects: path.startsWith(join(root, "cli") + sep) };
    });
    build.onLoad({ filter: /\.ts$/ }, (args) => ({
      contents: readFileSync(args.path, "utf8").replaceAll("import.meta.url", JSON.stringify(pathToFileURL(args.path).href)),
      loader: "ts",
    }));
  },
};

/** write replaces a file all at once, so a concurrent `shaker` reads the old one or the new one. */
function write(path, text) {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

/** build bundles cli/main.ts and records the stamps of its sources (and of this file). */
export async function build() {
  const esbuild = await loadEsbuild();
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: [join(root, "cli", "main.ts")],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    outfile: bundlePath,
    write: false,
    metafile: true,
    logLevel: "silent",
    plugins: [sourcesPlugin],
  });
  const inputs = {};
  for (const file of [...Object.keys(result.metafile.inputs), relative(root, self)]) {
    if (!file.includes(":")) inputs[file] = stamp(file);
  }
  mkdirSync(outDir, { recursive: true });
  write(bundlePath, result.outputFiles[0].text);
  write(manifestPath, JSON.stringify({ inputs, imports: Object.values(result.metafile.outputs)[0].imports.map((i) => i.path) }));
  return result.metafile;
}

/**
 * prebuiltCli imports the light CLI, building it first when it is missing or stale; it answers null
 * when it cannot (no esbuild, a read-only install, SHAKER_CLI_FROM_SOURCES=1): bin/shaker.js then
 * loads the sources through tsx.
 */
export async function prebuiltCli() {
  if (process.env.SHAKER_CLI_FROM_SOURCES === "1") return null;
  try {
    if (!fresh()) await build();
    return await import(pathToFileURL(bundlePath).href);
  } catch {
    return null;
  }
}
