import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createValidator, type ValidationResult } from "../services/registry/validator.js";
import { startTestServer, type TestServer } from "./helpers.js";

/** A valid workflow with helpers, schemas, imports and an annotation: it must pass. */
const valid = `
import json
from shaker import WorkflowContext

INPUT_SCHEMA = {
    "query": {"type": "string", "description": "the question", "required": True},
    "limit": {"type": "number"},
}
OUTPUT_SCHEMA = {"answer": {"type": "string", "description": "the answer"}}


def shout(text: str) -> str:
    return text.upper()


class Helper:
    def run(self):
        return None


def execute(ctx: WorkflowContext):
    q = (ctx.input or {}).get("query", "")
    if not q:
        return {"answer": ""}
    ctx.log("WorkflowContext is only a word in this string")
    return {"answer": shout(json.dumps(q))}
`;

/** One script per rule: the expected line, column and a fragment of the message. */
const cases: { rule: string; script: string; line: number; column: number; message: RegExp }[] = [
  {
    rule: "syntax error",
    script: "def execute(ctx):\n    return {'a': 1\n",
    line: 2,
    column: 12,
    message: /syntax error: .*never closed/,
  },
  {
    rule: "no execute",
    script: "def run(ctx):\n    return 1\n",
    line: 0,
    column: 0,
    message: /defines no module-level `def execute\(ctx\)`/,
  },
  {
    rule: "execute nested in a class is not module-level",
    script: "class A:\n    def execute(self, ctx):\n        return 1\n",
    line: 0,
    column: 0,
    message: /defines no module-level/,
  },
  {
    rule: "several execute",
    script: "def execute(ctx):\n    return 1\n\n\ndef execute(ctx):\n    return 2\n",
    line: 5,
    column: 1,
    message: /`execute` is defined more than once \(first at line 1\)/,
  },
  {
    rule: "async def execute",
    script: "async def execute(ctx):\n    return 1\n",
    line: 1,
    column: 1,
    message: /must be a plain `def`, not `async def`/,
  },
  {
    rule: "no parameter",
    script: "def execute():\n    return 1\n",
    line: 1,
    column: 1,
    message: /exactly one positional parameter \(ctx\), it takes 0/,
  },
  {
    rule: "two parameters",
    script: "def execute(ctx, extra):\n    return 1\n",
    line: 1,
    column: 1,
    message: /exactly one positional parameter \(ctx\), it takes 2/,
  },
  {
    rule: "**kwargs",
    script: "def execute(ctx, **kw):\n    return 1\n",
    line: 1,
    column: 1,
    message: /plus \*args\/\*\*kwargs/,
  },
  {
    rule: "never returns",
    script: "def execute(ctx):\n    ctx.log('hi')\n",
    line: 1,
    column: 1,
    message: /never returns a value/,
  },
  {
    rule: "bare return",
    script: "def execute(ctx):\n    if ctx.input:\n        return 1\n    return\n",
    line: 4,
    column: 5,
    message: /not a bare `return` or `return None`/,
  },
  {
    rule: "return None",
    script: "def execute(ctx):\n    return None\n",
    line: 2,
    column: 5,
    message: /not a bare `return` or `return None`/,
  },
  {
    rule: "generator",
    script: "def execute(ctx):\n    yield 1\n",
    line: 1,
    column: 1,
    message: /must return a value, not yield/,
  },
  {
    rule: "WorkflowContext not imported",
    script: "def execute(ctx: WorkflowContext):\n    return 1\n",
    line: 1,
    column: 18,
    message: /`WorkflowContext` is used but not imported/,
  },
  {
    rule: "WorkflowContext in a string annotation, not imported",
    script: "def execute(ctx: 'WorkflowContext'):\n    return 1\n",
    line: 1,
    column: 18,
    message: /`WorkflowContext` is used but not imported/,
  },
  {
    rule: "schema not a dict",
    script: "INPUT_SCHEMA = ['query']\n\ndef execute(ctx):\n    return 1\n",
    line: 1,
    column: 16,
    message: /INPUT_SCHEMA must be a literal dict .* not list/,
  },
  {
    rule: "schema built by a call",
    script: "OUTPUT_SCHEMA = dict(a={'type': 'string'})\n\ndef execute(ctx):\n    return 1\n",
    line: 1,
    column: 17,
    message: /OUTPUT_SCHEMA must be a literal dict .* not an expression/,
  },
  {
    rule: "schema field not a dict",
    script: "INPUT_SCHEMA = {'query': 'string'}\n\ndef execute(ctx):\n    return 1\n",
    line: 1,
    column: 26,
    message: /INPUT_SCHEMA\['query'\] must be a literal dict with a 'type'/,
  },
  {
    rule: "schema type unknown",
    script: "INPUT_SCHEMA = {'query': {'type': 'str'}}\n\ndef execute(ctx):\n    return 1\n",
    line: 1,
    column: 35,
    message: /INPUT_SCHEMA\['query'\]\['type'\] must be one of string, number, boolean, object, array, got 'str'/,
  },
  {
    rule: "schema type missing",
    script: "INPUT_SCHEMA = {'query': {'description': 'q'}}\n\ndef execute(ctx):\n    return 1\n",
    line: 1,
    column: 26,
    message: /INPUT_SCHEMA\['query'\] needs a 'type'/,
  },
  {
    rule: "schema unknown key",
    script: "INPUT_SCHEMA = {'query': {'type': 'string', 'default': 'x'}}\n\ndef execute(ctx):\n    return 1\n",
    line: 1,
    column: 45,
    message: /INPUT_SCHEMA\['query'\] has an unknown key 'default'/,
  },
  {
    rule: "schema required not a bool",
    script: "INPUT_SCHEMA = {'query': {'type': 'string', 'required': 'yes'}}\n\ndef execute(ctx):\n    return 1\n",
    line: 1,
    column: 57,
    message: /INPUT_SCHEMA\['query'\]\['required'\] must be True or False/,
  },
  {
    rule: "schema description not a string",
    script: "OUTPUT_SCHEMA = {'a': {'type': 'string', 'description': 3}}\n\ndef execute(ctx):\n    return 1\n",
    line: 1,
    column: 57,
    message: /OUTPUT_SCHEMA\['a'\]\['description'\] must be a literal string/,
  },
];

describe("upload validation (validate.py through the long-lived validator)", () => {
  const validator = createValidator("python3");
  afterAll(() => validator.close());

  it("accepts a valid script with helpers, schemas and an import, and extracts the schemas", async () => {
    const result = await validator.validate(valid);
    expect(result.errors).toEqual([]);
    expect(result.input_schema).toEqual({
      query: { type: "string", description: "the question", required: true },
      limit: { type: "number" },
    });
    expect(result.output_schema).toEqual({ answer: { type: "string", description: "the answer" } });
  });

  for (const c of cases) {
    it(`refuses: ${c.rule}`, async () => {
      const result: ValidationResult = await validator.validate(c.script);
      expect(result.errors.length, JSON.stringify(result.errors)).toBeGreaterThan(0);
      const match = result.errors.find((e) => c.message.test(e.message));
      expect(match, JSON.stringify(result.errors)).toBeDefined();
      expect({ line: match!.line, column: match!.column }).toEqual({ line: c.line, column: c.column });
    });
  }

  it("reports every problem at once, in source order", async () => {
    const script = [
      "INPUT_SCHEMA = {'q': {'type': 'text'}}", // 1
      "", // 2
      "async def execute(ctx: WorkflowContext, more):", // 3
      "    return", // 4
      "", // 5
      "def execute(ctx):", // 6
      "    return 1", // 7
    ].join("\n");
    const { errors } = await validator.validate(script);
    expect(errors.map((e) => e.line)).toEqual([1, 3, 3, 3, 4, 6]);
    expect(errors.map((e) => e.message).join("\n")).toMatch(
      /'type'.*\n.*async def.*\n.*positional.*\n.*WorkflowContext.*\n.*bare.*\n.*more than once/s,
    );
  });

  it("answers many requests in order from one process, and survives source it cannot read", async () => {
    const results = await Promise.all([
      validator.validate("def execute(ctx):\n    return 1\n"),
      validator.validate("x = '\0'\n"),
      validator.validate("def execute(ctx):\n    return\n"),
      validator.validate("é = 1\ndef execute(ctx):\n    return 'ünïcode'\n"),
    ]);
    expect(results[0].errors).toEqual([]);
    expect(results[1].errors.length).toBeGreaterThan(0);
    expect(results[2].errors[0].line).toBe(2);
    expect(results[3].errors).toEqual([]);
  });

  it("refuses a script too deeply nested to parse, and keeps answering", async () => {
    const deep = await validator.validate(`x = ${"-".repeat(200_000)}1\n`);
    expect(deep.errors).toEqual([{ line: 0, column: 0, message: "the script is nested too deeply for Python to parse" }]);
    expect((await validator.validate("def execute(ctx):\n    return 1\n")).errors).toEqual([]);
  });

  it("fails clearly when the interpreter cannot start, without hanging", async () => {
    const broken = createValidator("/nonexistent/python3");
    await expect(broken.validate("def execute(ctx):\n    return 1\n")).rejects.toThrow(/nonexistent\/python3/);
    broken.close();
  });
});

describe("validation through the REST edge", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server.close());

  it("POST /v1/workflows/validate lists every error and stores nothing", async () => {
    const bad = await server.request("POST", "/v1/workflows/validate", { code: "def execute():\n    return\n" });
    expect(bad.status).toBe(200);
    expect(bad.body.data.ok).toBe(false);
    expect(bad.body.data.errors).toEqual([
      { line: 1, column: 1, message: expect.stringMatching(/exactly one positional parameter/) },
      { line: 2, column: 5, message: expect.stringMatching(/bare `return`/) },
    ]);
    const ok = await server.request("POST", "/v1/workflows/validate", { code: valid });
    expect(ok.body.data).toEqual({ ok: true, errors: [] });
    const list = await server.request("GET", "/v1/workflows");
    expect(list.body.data).toEqual([]);
  });

  it("refuses a bad upload with 400 naming every problem, and stores nothing", async () => {
    const res = await server.request("POST", "/v1/workflows/upload", {
      workflow_ref_name: "broken",
      script: "INPUT_SCHEMA = {'q': {'type': 'text'}}\ndef execute(ctx):\n    pass\n",
    });
    expect(res.status).toBe(400);
    expect(res.body.error).toMatchObject({ type: "invalid_request_error", param: "script" });
    expect(res.body.error.message).toContain("line 1, column 31: INPUT_SCHEMA['q']['type'] must be one of");
    expect(res.body.error.message).toContain("line 2, column 1: `execute` never returns a value");
    expect((await server.request("GET", "/v1/workflows/broken")).status).toBe(404);
  });

  it("validates the default script it hands out", async () => {
    const res = await server.request("GET", "/v1/workflows/default-script");
    expect(res.status).toBe(200);
    const check = await server.request("POST", "/v1/workflows/validate", { code: res.body.data.script });
    expect(check.body.data).toEqual({ ok: true, errors: [] });
  });
});
