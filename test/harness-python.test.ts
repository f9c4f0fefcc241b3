// The Python harness's own unit tests (stdlib unittest, services/executor/harness/tests), run with the
// interpreter the server uses.
import { spawnSync } from "node:child_process";
import { expect, it } from "vitest";
import { harnessDir } from "../services/executor/pool.js";
import { loadConfig } from "../services/shared/config.js";

it("passes the harness's unittest suite (frames, sandbox description, seccomp program, ctx, tool schemas)", () => {
  const result = spawnSync(loadConfig().python, ["-B", "-m", "unittest", "discover", "-s", "tests", "-t", "."], {
    cwd: harnessDir,
    encoding: "utf8",
    timeout: 60_000,
  });
  const report = `${result.stdout}\n${result.stderr}`;
  expect(report).toMatch(/Ran \d+ tests/);
  expect(result.status, report).toBe(0);
});
