import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";

// A call through the in-process transport leaves nothing alive once it is over, so V8's young-
// generation collections (scavenges) copy next to nothing. An object literal with getters, or a
// generator function made per call (Connect's server streams make one), gets a map of its own in
// the old generation that keeps its call alive through every scavenge until the next full
// collection: each then copied megabytes and took milliseconds, the proxy's p99
// (bench/modelproxy.ts). Measured in a child process with V8's own accounting of each scavenge.
describe("calls between co-located services", () => {
  it("leave nothing alive for the young generation's collections to copy", () => {
    const out = execFileSync(process.execPath, ["--trace-gc-nvp", "bin/run-ts.js", "test/young-garbage-child.ts", "40000"], {
      encoding: "utf8",
      maxBuffer: 64 * 1024 * 1024,
    });
    const survived: Record<string, number[]> = {};
    let kind = "";
    for (const line of out.split("\n")) {
      const k = /^kind: (\w+)/.exec(line);
      if (k) kind = k[1];
      const s = / gc=s .*new_space_survived=(\d+)/.exec(line);
      // Worker threads (tsx's loader) log too: only the main isolate's lines follow a kind.
      if (s && kind && kind !== "end") (survived[kind] ??= []).push(Number(s[1]));
    }
    for (const kind of ["unary", "stream"]) {
      const sizes = survived[kind] ?? [];
      // Enough scavenges to judge, and the steady ones (the first follows the last kind's) copy little:
      // with a map per call, 1.7 to 3.6 MB each on Node 20.
      expect(sizes.length, kind).toBeGreaterThan(3);
      const steady = sizes.slice(1).sort((a, b) => a - b);
      expect(steady[Math.floor(steady.length / 2)], kind).toBeLessThan(256 * 1024);
    }
  }, 60_000);
});
