// Upload validation: one long-lived `validate.py --serve` process against a python3 spawned per script
// (what the Registry did before), both measured in this run on the same script.
import { createValidator } from "../services/registry/validator.js";
import { runPythonJson } from "../services/shared/python.js";
import { fmt, report, summary } from "./stats.js";

const script = `
from shaker import WorkflowContext

INPUT_SCHEMA = {"query": {"type": "string", "description": "the question", "required": True}}
OUTPUT_SCHEMA = {"answer": {"type": "string"}}

def helper(x):
    return x * 2

def execute(ctx: WorkflowContext):
    return {"answer": str(helper(len(ctx.input or {})))}
`;

async function time(n: number, call: () => Promise<unknown>): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await call();
    samples.push(performance.now() - t0);
  }
  return samples;
}

/** benchValidate reports the latency of validating one script, long-lived process vs spawn per call. */
export async function benchValidate(): Promise<void> {
  const python = process.env.SHAKER_PYTHON ?? "python3";
  const validatorScript = new URL("../services/registry/validate.py", import.meta.url).pathname;
  const validator = createValidator(python);
  await validator.validate(script); // start the process outside the measurement
  const spawnEach = summary(
    await time(20, () => runPythonJson({ python, script: validatorScript, input: { code: script }, timeoutMs: 20_000 })),
  );
  const served = summary(await time(200, () => validator.validate(script)));
  validator.close();
  report(
    "validate one script (p50)",
    `${fmt(served.p50)} ms (n=${served.n})`,
    `${fmt(spawnEach.p50)} ms spawn/call`,
    spawnEach.p50 / served.p50,
    "faster",
  );
}
