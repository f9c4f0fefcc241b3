import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

describe("generated code", () => {
  it("matches what buf generates from proto/ (commit gen/ after changing a .proto)", () => {
    const out = mkdtempSync(join(tmpdir(), "shaker-gen-"));
    try {
      const template = readFileSync("buf.gen.yaml", "utf8").replace("out: gen", `out: ${out}`);
      const templateFile = join(out, "buf.gen.yaml");
      writeFileSync(templateFile, template);
      execFileSync("npx", ["buf", "generate", "--template", templateFile], { stdio: "pipe" });
      const fresh = files(out)
        .filter((f) => f.endsWith(".ts"))
        .map((f) => relative(out, f))
        .sort();
      const committed = files("gen")
        .map((f) => relative("gen", f))
        .sort();
      expect(committed).toEqual(fresh);
      for (const f of fresh) {
        expect(readFileSync(join("gen", f), "utf8"), `gen/${f} is stale: run npm run generate`).toBe(readFileSync(join(out, f), "utf8"));
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
