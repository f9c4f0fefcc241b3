// A failed run's traceback as a client reads it (issue 18): through a real server, the OpenAI path's
// error names the run, and GET /v1/runs/{id} shows the workflow's frames with their source lines and
// nothing of the harness. The formatting itself is unit-tested in the harness (tests/test_traceback.py).
import { afterAll, beforeAll, expect, it } from "vitest";
import { harnessDir } from "../services/executor/pool.js";
import { startTestServer, type TestServer } from "./helpers.js";

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(() => server.close());

const script = `import json


def parse(text):
    return json.loads(text)


def execute(ctx):
    token = ctx.secrets["token"]
    if ctx.input.get("parse"):
        return parse("{not json")
    raise ValueError("bad input for " + token)
`;

async function failedRun(input: Record<string, unknown>): Promise<{ message: string; traceback: string }> {
  const res = await server.invoke({ model: "workflow:raiser", input, secrets: { token: "sk-very-secret-123" } });
  expect(res.status).toBe(500);
  const runId = res.body.error.run_id;
  expect(runId).toBeTruthy();
  const run = await server.request("GET", `/v1/runs/${runId}`);
  expect(run.status).toBe(200);
  return { message: res.body.error.message, traceback: run.body.data?.error?.traceback ?? run.body.error?.traceback };
}

it("shows the workflow's frame with its source line, and no frame or path of the harness", async () => {
  await server.upload("raiser", script);
  const { message, traceback } = await failedRun({});
  expect(message).toContain("ValueError: bad input for");
  expect(traceback).toMatch(/^Traceback \(most recent call last\):\n/);
  expect(traceback).toContain('  File "workflow.py", line 12, in execute\n    raise ValueError("bad input for " + token)\n');
  expect(traceback).toMatch(/ValueError: bad input for \[REDACTED\]\n$/);
  expect(traceback).not.toContain("sk-very-secret-123");
  expect(traceback).not.toContain(harnessDir);
  expect(traceback).not.toContain("runtime.py");
  expect(traceback).not.toContain("shaker/");
});

it("keeps the frames of what the workflow called, each with its line", async () => {
  const { traceback } = await failedRun({ parse: true });
  expect(traceback).toContain('  File "workflow.py", line 11, in execute\n    return parse("{not json")\n');
  expect(traceback).toContain('  File "workflow.py", line 5, in parse\n    return json.loads(text)\n');
  expect(traceback).toMatch(/File ".*json\/decoder\.py", line \d+, in raw_decode\n/);
  expect(traceback).toContain("json.decoder.JSONDecodeError: Expecting property name");
  expect(traceback).not.toContain(harnessDir);
});
