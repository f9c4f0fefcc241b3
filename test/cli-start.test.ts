// How `shaker` starts: --version, `help COMMAND` for every command, and the light CLI that runs every
// command but `serve` and `keys` without tsx or the server's modules (cli/prebuilt.js). No server:
// these are the answers a user gets before any. How fast they come is for `npm run bench -- cli`.
import { readFileSync, statSync, utimesSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { needsSources } from "../cli/main.js";
import { build, bundlePath } from "../cli/prebuilt.js";
import { runMain, runShaker } from "./cli-process.js";

const { version } = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
const commands = ["serve", "upload", "validate", "invoke", "runs", "datastores", "keys", "help"];

describe("shaker --version and shaker help", () => {
  it("--version prints package.json's version", async () => {
    expect(await runMain(["--version"])).toEqual({ code: 0, stdout: `shaker ${version}\n`, stderr: "" });
  });

  it("help COMMAND prints that command's help, the same as COMMAND --help, for every command", async () => {
    const list = await runMain(["help"]);
    expect(list.code).toBe(0);
    for (const c of commands) {
      expect(list.stdout).toMatch(new RegExp(`^ {2}${c} `, "m"));
      const help = await runMain(["help", c]);
      expect(help, c).toMatchObject({ code: 0, stderr: "" });
      expect(help.stdout).toMatch(new RegExp(`^usage: shaker ${c}\\b`));
      if (c === "help") continue;
      const flag = await runMain([c, "--help"]);
      expect(flag, c).toEqual(help);
    }
    expect((await runMain(["keys"])).stdout).toBe((await runMain(["help", "keys"])).stdout);
  });

  it("an unknown command, to run or to explain, is a usage error: exit 2 with the list of commands", async () => {
    for (const args of [["frobnicate"], ["help", "frobnicate"], ["--verbose"]]) {
      const r = await runMain(args);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`^shaker: unknown command '${args.at(-1)}'\\nusage: shaker <command>`));
      expect(r.stdout).toBe("");
    }
    const serve = await runMain(["serve", "--port", "1"]);
    expect(serve.code).toBe(2);
    expect(serve.stderr).toMatch(/^shaker: serve: unknown argument/);
  });
});

describe("the light CLI", () => {
  it("leaves out the server's modules: the bundle imports only Node's own", async () => {
    const metafile = await build();
    const imports = Object.values(metafile.outputs)[0]!.imports.map((i) => i.path);
    expect(imports.length).toBeGreaterThan(0);
    expect(imports.filter((path) => !path.startsWith("node:"))).toEqual([]);
    const inputs = Object.keys(metafile.inputs);
    expect(inputs).toContain("cli/main.ts");
    expect(inputs.filter((f) => /cli\/(serve|keys)\.ts$/.test(f))).toEqual([]);
  });

  it("runs every command from the bundle but serve and keys, which are only asked for help there", () => {
    for (const args of [
      ["--help"],
      ["--version"],
      ["help", "serve"],
      ["runs"],
      ["invoke", "x"],
      ["upload", "f.py"],
      ["datastores", "list"],
    ]) {
      expect(needsSources(args), args.join(" ")).toBe(false);
    }
    for (const args of [["serve", "--help"], ["keys"], ["keys", "--help"], ["keys", "help"]])
      expect(needsSources(args), args.join(" ")).toBe(false);
    for (const args of [["serve"], ["keys", "list"], ["keys", "create", "--account", "a"]])
      expect(needsSources(args), args.join(" ")).toBe(true);
  });

  it("answers as the sources do, and is rebuilt when a source changes", async () => {
    const viaBundle = await Promise.all([runShaker(["--version"]), runShaker(["help", "upload"]), runShaker(["frobnicate"])]);
    const viaTsx = await Promise.all(
      [["--version"], ["help", "upload"], ["frobnicate"]].map((args) => runShaker(args, { SHAKER_CLI_FROM_SOURCES: "1" })),
    );
    expect(viaBundle).toEqual(viaTsx);
    expect(viaBundle[0]).toEqual({ code: 0, stdout: `shaker ${version}\n`, stderr: "" });
    expect(viaBundle[2]!.code).toBe(2);

    // A touched source makes the next command rebuild the bundle (its mtime is what is compared).
    const source = new URL("../cli/help.ts", import.meta.url);
    const before = statSync(bundlePath).mtimeMs;
    const then = new Date(Date.now() + 1000);
    utimesSync(source, then, then);
    expect(await runShaker(["--version"])).toMatchObject({ code: 0 });
    expect(statSync(bundlePath).mtimeMs).toBeGreaterThan(before);
    const manifest = JSON.parse(readFileSync(bundlePath.replace(/\.mjs$/, ".json"), "utf8"));
    expect(manifest.inputs["cli/help.ts"]).toBe(`${statSync(source).mtimeMs}:${statSync(source).size}`);
  });
});
