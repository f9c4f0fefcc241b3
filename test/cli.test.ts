// The `shaker` command: main(argv, io) of cli/main.ts run in this process against one in-process
// Shaker (what every command prints, and its exit code), and, at the end, the installed command run
// as a user runs it against `shaker serve` started as a user starts it (what only real processes show).
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bin, type CliResult, runMain, runShaker, startCliServer } from "./cli-process.js";
import { startTestServer, type TestServer, waitFor } from "./helpers.js";

let server: TestServer;
let dir: string;

/** shaker runs the command in process against the test server (SHAKER_URL and SHAKER_API_KEY set). */
function shaker(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return runMain(args, { SHAKER_URL: server.url, SHAKER_API_KEY: server.apiKey, ...env });
}

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** oneLineError asserts a failure reported as one line on stderr, no stack trace. */
function oneLineError(r: CliResult, code = 1): string {
  expect(r.code, r.stderr).toBe(code);
  const lines = r.stderr.trim().split("\n");
  expect(lines[0]).toMatch(/^shaker: /);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  return lines[0]!;
}

const emitter = `from shaker import WorkflowContext

def execute(ctx: WorkflowContext):
    ctx.log("starting", n=3)
    for i in range(3):
        ctx.emit({"step": i})
    ctx.emit("last words")
    return {"input": ctx.input, "messages": ctx.messages, "session": ctx.session_id}
`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shaker-cli-files-"));
  server = await startTestServer();
}, 60_000);

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("shaker validate (no server)", () => {
  it("accepts a valid script without any server", async () => {
    const r = await runMain(["validate", "examples/hello.py"], { SHAKER_URL: "http://127.0.0.1:9" });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("examples/hello.py: ok");
  });

  it("shows each problem with its source line and a caret under the column, and exits 1", async () => {
    const bad = file("bad.py", "from shaker import WorkflowContext\n\ndef execute(ctx):\n    total = 1\n    return\n");
    const r = await runMain(["validate", bad]);
    expect(r.code).toBe(1);
    const lines = r.stderr.split("\n");
    const at = lines.findIndex((l) => l.startsWith(`${bad}:5:5: `));
    expect(at, r.stderr).toBeGreaterThanOrEqual(0);
    expect(lines[at + 1]).toBe("  5 |     return");
    expect(lines[at + 2]).toBe("    |     ^");
    expect(r.stderr).toMatch(/shaker: .*1 problem; not a valid workflow/);
  });

  it("points at a syntax error", async () => {
    const bad = file("syntax.py", "def execute(ctx):\n    return {'a': (1, }\n");
    const r = await runMain(["validate", bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`${bad}:2:\\d+: `));
    expect(r.stderr).toContain("  2 |     return {'a': (1, }");
    expect(r.stderr).toMatch(/\n {4}\| +\^/);
  });

  it("a missing file is one line", async () => {
    expect(oneLineError(await runMain(["validate", join(dir, "nope.py")]))).toContain("no such file");
  });
});

describe("shaker upload", () => {
  it("uploads a file, names it after the file, and bumps versions", async () => {
    const path = file("Greeter Flow.py", "def execute(ctx):\n    return {'hi': (ctx.input or {}).get('name')}\n");
    const first = await shaker(["upload", path]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain("workflow greeter-flow version 1.0.0");
    const second = await shaker(["upload", path, "--bump", "major"]);
    expect(second.stdout, second.stderr).toContain("version 2.0.0");
    const got = await server.request("GET", "/v1/workflows/greeter-flow");
    expect(got.status).toBe(200);
    expect(JSON.stringify(got.body.data)).toContain("2.0.0");
  });

  it("sends --name, --mode, --timeout, --env and --accessory", async () => {
    const script = `def execute(ctx):
    return {"rates": ctx.load_accessory("rates"), "region": ctx.env.get("REGION")}
`;
    const path = file("acc.py", script);
    const rates = file("rates.json", JSON.stringify({ eur: 1.1 }));
    const r = await shaker([
      "upload",
      path,
      "--name",
      "with-acc",
      "--accessory",
      `rates=${rates}`,
      "--env",
      "REGION=eu",
      "--timeout",
      "30",
      "--mode",
      "sync",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const inv = await shaker(["invoke", "with-acc"]);
    expect(inv.code, inv.stderr).toBe(0);
    expect(JSON.parse(inv.stdout)).toEqual({ rates: { eur: 1.1 }, region: "eu" });
  });

  it("refuses an invalid script with carets, exit 1, and stores nothing", async () => {
    const path = file("broken.py", "async def execute(ctx):\n    return 1\n");
    const r = await shaker(["upload", path, "--name", "broken"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${path}:1:1: `);
    expect(r.stderr).toContain("  1 | async def execute(ctx):");
    expect(r.stderr).toContain("    | ^");
    expect(r.stderr).toMatch(/the upload was refused/);
    expect((await server.request("GET", "/v1/workflows/broken")).status).toBe(404);
  });

  it("refuses bad flags and files in one line", async () => {
    oneLineError(await shaker(["upload", join(dir, "missing.py")]));
    const ok = file("ok.py", "def execute(ctx):\n    return 1\n");
    expect(oneLineError(await shaker(["upload", ok, "--bump", "huge"]), 2)).toContain("--bump");
    const notJson = file("acc.txt", "not json");
    expect(oneLineError(await shaker(["upload", ok, "--accessory", `k=${notJson}`]))).toContain("is not JSON");
    expect(oneLineError(await shaker(["upload", ok, "--name", "Bad Name!"]))).toMatch(/HTTP 400/);
  });
});

describe("the command an upload suggests", () => {
  /** suggested is the `shaker invoke` command an upload printed. */
  function suggested(up: CliResult): string {
    expect(up.code, up.stderr).toBe(0);
    const m = /^invoke it: (shaker invoke .*?) {3}\(or model "workflow:[^"]+"\)$/m.exec(up.stdout);
    expect(m, up.stdout).not.toBeNull();
    return m![1]!;
  }

  /** runInShell runs a printed `shaker ...` command line as a user pastes it: through sh, with the installed command. */
  function runInShell(commandLine: string): Promise<CliResult> {
    return new Promise((resolve) => {
      const line = commandLine.replace(/^shaker /, `"${process.execPath}" "${bin}" `);
      execFile(
        "/bin/sh",
        ["-c", line],
        { env: { ...process.env, SHAKER_URL: server.url, SHAKER_API_KEY: server.apiKey }, timeout: 60_000 },
        (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? -1) : 0, stdout, stderr }),
      );
    });
  }

  it("fills the fields INPUT_SCHEMA requires with values of their types, and the command works", async () => {
    const path = file(
      "needs-fields.py",
      `INPUT_SCHEMA = {
    "query": {"type": "string", "required": True},
    "count": {"type": "number", "required": True},
    "strict": {"type": "boolean", "required": True},
    "tags": {"type": "array", "required": True},
    "extra": {"type": "object", "required": True},
    "note": {"type": "string"},
}

def execute(ctx):
    return {"query": ctx.input["query"], "count": ctx.input["count"] + 1}
`,
    );
    const command = suggested(await shaker(["upload", path]));
    expect(command).toBe(`shaker invoke needs-fields --input '{"query":"text","count":1,"strict":true,"tags":[],"extra":{}}'`);
    const r = await runInShell(command);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ query: "text", count: 2 });
    // The old hint, `--input '{}'`, is refused by the schema.
    expect((await runInShell("shaker invoke needs-fields --input '{}'")).stderr).toMatch(/query/);
  });

  it("suggests --message for a workflow that reads ctx.messages, and --input '{}' for one that needs nothing", async () => {
    const chat = file("chatty.py", "def execute(ctx):\n    return {'said': ctx.messages[-1]['content']}\n");
    const chatCommand = suggested(await shaker(["upload", chat]));
    expect(chatCommand).toBe("shaker invoke chatty --message 'Hello'");
    const said = await runInShell(chatCommand);
    expect(said.code, said.stderr).toBe(0);
    expect(JSON.parse(said.stdout)).toEqual({ said: "Hello" });

    const plain = file("plain.py", "def execute(ctx):\n    return {'got': ctx.input}\n");
    const plainCommand = suggested(await shaker(["upload", plain]));
    expect(plainCommand).toBe("shaker invoke plain --input '{}'");
    const got = await runInShell(plainCommand);
    expect(got.code, got.stderr).toBe(0);
    expect(JSON.parse(got.stdout)).toEqual({ got: {} });
  });

  it("adds the keys a script without INPUT_SCHEMA reads with ctx.input[...], quoted for the shell", async () => {
    const path = file("reads-keys.py", "def execute(ctx):\n    return ctx.input[\"it's\"] + ' ' + ctx.input['name']\n");
    const command = suggested(await shaker(["upload", path]));
    expect(command).toBe(`shaker invoke reads-keys --input '{"it'\\''s":"text","name":"text"}'`);
    const r = await runInShell(command);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toBe("text text");
  });

  it("works for examples/hello.py, which takes a name or a message", async () => {
    const command = suggested(await shaker(["upload", "examples/hello.py"]));
    expect(command).toBe("shaker invoke hello --message 'Hello'");
    const r = await runInShell(command);
    expect(r.code, r.stderr).toBe(0);
  });
});

describe("shaker invoke and runs", () => {
  let runId = "";

  beforeAll(async () => {
    const r = await shaker(["upload", file("emitter.py", emitter)]);
    expect(r.code, r.stderr).toBe(0);
  });

  it("prints the output as JSON; --input takes JSON or @file; --message sends a user message", async () => {
    const a = await shaker(["invoke", "emitter", "--input", '{"q": 1}', "--session", "sess-cli-1"]);
    expect(a.code, a.stderr).toBe(0);
    expect(JSON.parse(a.stdout)).toEqual({ input: { q: 1 }, messages: [], session: "sess-cli-1" });
    runId = /run (\S+) \(session sess-cli-1\)/.exec(a.stderr)![1]!;
    const inputFile = file("input.json", '{"from": "file"}');
    const b = await shaker(["invoke", "emitter", "--input", `@${inputFile}`]);
    expect(JSON.parse(b.stdout).input).toEqual({ from: "file" });
    const c = await shaker(["invoke", "workflow:emitter", "--message", "hello there"]);
    expect(JSON.parse(c.stdout).messages).toEqual([{ role: "user", content: "hello there" }]);
  });

  it("--stream prints each emitted value as it arrives, then the output", async () => {
    const r = await shaker(["invoke", "emitter", "--stream", "--input", "{}"]);
    expect(r.code, r.stderr).toBe(0);
    const emitted = r.stderr.split("\n").filter((l) => l.startsWith("» "));
    expect(emitted).toEqual(['» {"step":0}', '» {"step":1}', '» {"step":2}', "» last words"]);
    expect(JSON.parse(r.stdout).input).toEqual({});
  });

  it("fails in one line for an unknown workflow, bad input JSON and a wrong key", async () => {
    expect(oneLineError(await shaker(["invoke", "no-such-flow"]))).toMatch(/not found.*HTTP 404/);
    expect(oneLineError(await shaker(["invoke", "emitter", "--input", "{oops"]), 2)).toContain("--input is not JSON");
    expect(oneLineError(await shaker(["invoke", "emitter"], { SHAKER_API_KEY: "sk-wrong" }))).toMatch(/HTTP 401/);
    expect(oneLineError(await shaker(["invoke"]), 2)).toContain("missing REF");
  });

  it("--mode async: invoke answers at once with the run id, and runs show finds the run", async () => {
    const path = file("later.py", "def execute(ctx):\n    ctx.emit('working')\n    return {'done': True}\n");
    expect((await shaker(["upload", path, "--mode", "async"])).code).toBe(0);
    const r = await shaker(["invoke", "later"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("the run continues in the background");
    const accepted = JSON.parse(r.stdout);
    expect(accepted.run_id).toMatch(/\S+/);
    let shown = "";
    await waitFor(
      async () => (shown = (await shaker(["runs", "show", accepted.run_id])).stdout).includes("status    succeeded"),
      "the async run to succeed",
    );
    expect(shown).toContain('output    {"done":true}');
  });

  it("a failure in the middle of a stream is one line after the values emitted before it", async () => {
    const path = file("halfway.py", "def execute(ctx):\n    ctx.emit('first')\n    raise RuntimeError('halfway')\n    return 1\n");
    expect((await shaker(["upload", path])).code).toBe(0);
    const r = await shaker(["invoke", "halfway", "--stream"]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split("\n");
    expect(lines[0]).toBe("» first");
    expect(lines.at(-1)).toMatch(/^shaker: .*RuntimeError.*halfway/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it("a workflow that raises is one line with the exception", async () => {
    await shaker(["upload", file("boom.py", "def execute(ctx):\n    raise ValueError('kaput')\n    return 1\n")]);
    expect(oneLineError(await shaker(["invoke", "boom"]))).toMatch(/ValueError.*kaput/);
  });

  it("runs lists runs with filters; runs show has emitted values, logs and timings", async () => {
    const all = await shaker(["runs", "--workflow", "emitter"]);
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout).toMatch(/^RUN\s+WORKFLOW\s+STATUS/);
    expect(all.stdout).toContain(runId);
    expect(all.stdout).toContain("emitter@1.0.0");
    const bySession = await shaker(["runs", "--session", "sess-cli-1", "--json"]);
    const runs = JSON.parse(bySession.stdout);
    expect(runs.map((r: any) => r.run_id)).toEqual([runId]);
    const failed = await shaker(["runs", "--status", "failed", "--json"]);
    expect(JSON.parse(failed.stdout).every((r: any) => r.status === "failed")).toBe(true);
    const show = await shaker(["runs", "show", runId]);
    expect(show.code, show.stderr).toBe(0);
    expect(show.stdout).toContain(`run       ${runId}`);
    expect(show.stdout).toContain("status    succeeded");
    expect(show.stdout).toMatch(/duration {2}\d+(ms|\.\d+s)/);
    expect(show.stdout).toContain("emitted (4)");
    expect(show.stdout).toContain('{"step":2}');
    expect(show.stdout).toMatch(/logs \(\d+\)\n.*info\s+starting \{"n":3\}/);
    expect(show.stdout).toContain("model calls (0)");
  });

  it("runs fails in one line for an unknown run or status", async () => {
    expect(oneLineError(await shaker(["runs", "show", "run_doesnotexist"]))).toMatch(/HTTP 404/);
    expect(oneLineError(await shaker(["runs", "--status", "weird"]))).toMatch(/status.*HTTP 400/);
  });
});

describe("shaker with no server", () => {
  it("a refused connection is one clear line and exit 1", async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    for (const args of [["runs"], ["invoke", "x"], ["datastores", "list"], ["upload", "examples/hello.py"]]) {
      const line = oneLineError(await runMain(args, { SHAKER_URL: `http://127.0.0.1:${port}` }));
      expect(line).toContain(`cannot reach Shaker at http://127.0.0.1:${port} (connection refused)`);
      expect(line).toContain("--server");
    }
    const flag = oneLineError(await runMain(["runs", "--server", `http://127.0.0.1:${port}`]));
    expect(flag).toContain("connection refused");
  });

  it("unknown commands and options are usage errors (exit 2); --help is the usage on stdout (exit 0)", async () => {
    const unknown = await runMain(["frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^shaker: unknown command 'frobnicate'\nusage: shaker <command>/);
    const r = await runMain(["runs", "--bogus"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--bogus");
    const help = await runMain(["--help"]);
    expect(help.code).toBe(0);
    for (const c of ["upload", "validate", "invoke", "runs", "datastores", "keys", "serve"]) expect(help.stdout).toContain(c);
    const runsHelp = await runMain(["runs", "--help"]);
    expect(runsHelp).toMatchObject({ code: 0, stderr: "" });
    expect(runsHelp.stdout).toMatch(/^usage: shaker runs /);
  });
});

describe("shaker datastores", () => {
  // Records carry their vectors, so no embedding model is needed.
  it("creates, lists, loads NDJSON and JSON with a records/s figure, and searches", async () => {
    const created = await shaker(["datastores", "create", "docs"]);
    expect(created.code, created.stderr).toBe(0);
    const ndjson = file(
      "docs.ndjson",
      Array.from({ length: 1200 }, (_, i) =>
        JSON.stringify({ id: `d${i}`, text: `document number ${i} about ${i % 2 ? "apples" : "pears"}`, vector: [1, i % 2, 0, 0] }),
      ).join("\n") + "\n",
    );
    const load = await shaker(["datastores", "load", "docs", ndjson, "--progress", "--batch", "500"]);
    expect(load.code, load.stderr).toBe(0);
    expect(load.stderr).toMatch(/\[#{30}\] 100% 1200 records/);
    expect(load.stderr).toMatch(/loaded 1200 records into docs in [\d.]+s \(\d+ records\/s/);
    const array = file("more.json", JSON.stringify([{ id: "k1", text: "kiwi fruit", metadata: { c: 1 }, vector: [0, 0, 1, 0] }]));
    const loadJson = await shaker(["datastores", "load", "docs", array]);
    expect(loadJson.stderr).toMatch(/loaded 1 records into docs/);
    const list = await shaker(["datastores", "list", "--json"]);
    const docs = JSON.parse(list.stdout).find((s: any) => s.name === "docs");
    expect(docs.record_count).toBe(1201);
    const search = await shaker(["datastores", "search", "docs", "kiwi", "--limit", "3", "--json"]);
    expect(search.code, search.stderr).toBe(0);
    expect(JSON.parse(search.stdout)[0].id).toBe("k1");
    const text = await shaker(["datastores", "search", "docs", "kiwi"]);
    expect(text.stdout).toMatch(/^\d\.\d{3} {2}k1 {2}kiwi fruit/);
    // --datastore binds the store to an uploaded workflow (read-only unless :rw).
    const reader = file("reader.py", "def execute(ctx):\n    return ctx.datastore.get('docs', 'k1')['text']\n");
    expect((await shaker(["upload", reader, "--datastore", "docs"])).code).toBe(0);
    const read = await shaker(["invoke", "reader"]);
    expect(read.code, read.stderr).toBe(0);
    expect(JSON.parse(read.stdout)).toBe("kiwi fruit");
  });

  it("fails in one line for a bad record line, an unknown store, and a missing file", async () => {
    const bad = file("bad.ndjson", '{"id": "a", "text": "fine", "vector": [1, 0, 0, 0]}\n{not json\n');
    expect(oneLineError(await shaker(["datastores", "load", "docs", bad]))).toContain(`${bad}:2: not a JSON record`);
    expect(oneLineError(await shaker(["datastores", "search", "no-such-store", "x"]))).toMatch(/HTTP 404/);
    expect(oneLineError(await shaker(["datastores", "load", "docs", join(dir, "none.ndjson")]))).toContain("no such file");
    expect(oneLineError(await shaker(["datastores", "wat"]), 2)).toContain("unknown datastores subcommand");
  });
});

describe("shaker serve, in process", () => {
  it("prints where it listens and the key it created, serves with that key, and stops with exit 0", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "shaker-cli-serve-"));
    const stop = new AbortController();
    let banner = "";
    let listening!: (url: string) => void;
    const url = new Promise<string>((resolve) => (listening = resolve));
    const served = runMain(
      ["serve"],
      { PORT: "0", SHAKER_DATA_DIR: dataDir, SHAKER_WORKERS: "1", SHAKER_SANDBOX: "none" },
      {
        signal: stop.signal,
        onStdout(text) {
          banner += text;
          const m = /^Shaker is listening on (http:\/\/\S+) \(data in (.*)\)$/m.exec(banner);
          if (m && /export SHAKER_API_KEY=/.test(banner)) listening(m[1]!);
        },
      },
    );
    try {
      const at = await Promise.race([url, served.then((r) => Promise.reject(new Error(`serve ended: ${r.code} ${r.stderr}`)))]);
      expect(banner).toContain(`(data in ${dataDir})`);
      expect(banner).toMatch(/^Runs: NOT confined \(SHAKER_SANDBOX=none\)/m);
      const key = /It is shown only this once; keep it:\n\n {2}(sk-shaker-\S+)\n/.exec(banner)![1]!;
      expect(banner).toContain(`export SHAKER_API_KEY=${key}`);
      expect(await runMain(["runs"], { SHAKER_URL: at, SHAKER_API_KEY: key })).toEqual({ code: 0, stdout: "no runs\n", stderr: "" });
      expect(oneLineError(await runMain(["runs"], { SHAKER_URL: at, SHAKER_API_KEY: "sk-not-it" }))).toMatch(/HTTP 401/);
    } finally {
      stop.abort();
      const ended = await served;
      rmSync(dataDir, { recursive: true, force: true });
      expect(ended.code, ended.stderr).toBe(0);
      expect(ended.stdout).toMatch(/stopped: shutting down\n$/);
    }
  });
});

// What only real processes show: bin/shaker.js loads the sources, exits with main's code, and
// `shaker serve` started as a user starts it serves the command and ends on SIGTERM.
describe("the installed command, as a user runs it", () => {
  it("--help is the usage (exit 0); a usage mistake is one line and exit 2", async () => {
    const [help, mistake] = await Promise.all([runShaker(["--help"]), runShaker(["invoke"])]);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^usage: shaker <command>/);
    expect(oneLineError(mistake, 2)).toBe("shaker: missing REF");
  });

  it("uploads and invokes against `shaker serve`, which SIGTERM ends with exit 0", async () => {
    const served = await startCliServer();
    try {
      const path = file("as-a-user.py", "def execute(ctx):\n    ctx.emit('from a process')\n    return {'input': ctx.input}\n");
      const up = await served.shaker(["upload", path]);
      expect(up.code, up.stderr).toBe(0);
      expect(up.stdout).toContain("created workflow as-a-user version 1.0.0");
      const inv = await served.shaker(["invoke", "as-a-user", "--stream", "--input", '{"a": 1}']);
      expect(inv.code, inv.stderr).toBe(0);
      expect(inv.stderr).toContain("» from a process\n");
      expect(JSON.parse(inv.stdout)).toEqual({ input: { a: 1 } });
    } finally {
      await served.close();
    }
    expect(served.process.exitCode).toBe(0);
  });
});
