import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registryLimits } from "../services/registry/rules.js";
import { startTestServer, type TestServer } from "./helpers.js";

const b64 = (text: string) => Buffer.from(text, "utf8").toString("base64");

const reader = `
def execute(ctx):
    prices = ctx.load_accessory("PRICES_table")        # uploaded as "prices-table"
    raw = ctx.load_accessory("raw")                      # uploaded as base64
    fallback = ctx.load_accessory("not-uploaded", fallback_path=ctx.input["fallback"])
    try:
        ctx.load_accessory("missing-too")
        missing = "found?"
    except KeyError as e:
        missing = str(e)
    # Uploaded accessories win over the fallback file.
    preferred = ctx.load_accessory("raw", fallback_path="/nonexistent/file.json")
    return {"prices": prices, "raw": raw, "fallback": fallback, "missing": missing, "preferred": preferred}
`;

describe("accessories", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server.close());

  it("stores JSON and base64-of-JSON accessories that the workflow loads by key, with fallback_path", async () => {
    await server.upload("reader", reader, {
      accessories: [
        { key: "prices-table", content: { apple: 1.5, pear: [2, 3] } },
        { key: "Raw", content_base64: b64(JSON.stringify({ ünï: "côdé", n: null })).replace(/(.{8})/g, "$1\n") },
      ],
    });
    const fallbackFile = join(server.dataDir, "fallback.json");
    writeFileSync(fallbackFile, JSON.stringify({ from: "file" }));
    const res = await server.invoke({ model: "workflow:reader", input: { fallback: fallbackFile } });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.output).toEqual({
      prices: { apple: 1.5, pear: [2, 3] },
      raw: { ünï: "côdé", n: null },
      fallback: { from: "file" },
      missing: expect.stringContaining("no accessory 'missing-too'"),
      preferred: { ünï: "côdé", n: null },
    });
    const wf = await server.request("GET", "/v1/workflows/reader");
    expect(wf.body.data.versions[0].accessory_keys.sort()).toEqual(["Raw", "prices-table"]);
  });

  it("keeps accessories with their version: a new version without them does not see them", async () => {
    await server.upload("keeper", "def execute(ctx):\n    return ctx.load_accessory('doc')\n", {
      accessories: [{ key: "doc", content: "v1 doc" }],
    });
    await server.upload(
      "keeper",
      "def execute(ctx):\n    try:\n        return ctx.load_accessory('doc')\n    except KeyError:\n        return 'none'\n",
    );
    expect((await server.invoke({ model: "workflow:keeper@1.0.0", input: {} })).body.output).toBe("v1 doc");
    expect((await server.invoke({ model: "workflow:keeper", input: {} })).body.output).toBe("none");
  });

  /** Each bad upload must fail with its status and message and leave the existing workflow as it was. */
  async function refused(accessories: unknown[], status: number, message: RegExp, param?: string): Promise<void> {
    const res = await server.request("POST", "/v1/workflows/upload", {
      workflow_ref_name: "guarded",
      script: "def execute(ctx):\n    return 'v1'\n",
      accessories,
    });
    expect(res.status, JSON.stringify(res.body).slice(0, 300)).toBe(status);
    expect(res.body.error.message).toMatch(message);
    if (param) expect(res.body.error.param).toBe(param);
    const wf = await server.request("GET", "/v1/workflows/guarded");
    expect(wf.body.data.versions.map((v: any) => v.version)).toEqual(["1.0.0"]);
  }

  it("refuses bad accessories with a clear 4xx and stores nothing", async () => {
    await server.upload("guarded", "def execute(ctx):\n    return 'v1'\n", { accessories: [{ key: "keep", content: [1] }] });
    await refused(
      [{ key: "a", content_base64: "!!!not base64!!!" }],
      400,
      /'accessories\[0\]\.content_base64' is not valid base64/,
      "accessories[0].content_base64",
    );
    await refused([{ key: "a", content_base64: b64("this is not JSON") }], 400, /does not decode to JSON/, "accessories[0].content_base64");
    await refused([{ key: "a", content_base64: 42 }], 400, /not valid base64/);
    await refused([{ key: "a", content_base64: "eyJhIjoxfQ==eyJhIjoxfQ==" }], 400, /not valid base64/);
    await refused([{ key: "a", content_base64: "eyJhIjoxfQ=" + "x" }], 400, /not valid base64/);
    await refused([{ key: "a" }], 400, /needs 'content' \(JSON\) or 'content_base64'/, "accessories[0]");
    await refused([{ content: 1 }], 400, /'accessories\[0\]\.key' must be a non-empty string/);
    await refused(
      [
        { key: "Same-Key", content: 1 },
        { key: "same_key", content: 2 },
      ],
      400,
      /accessories\[1\]\.key 'same_key' is the same key as 'Same-Key'/,
      "accessories[1].key",
    );
    const tooMany = Array.from({ length: registryLimits.accessoriesPerWorkflow + 1 }, (_, i) => ({ key: `k${i}`, content: i }));
    await refused(tooMany, 400, /at most 100 accessories, got 101/, "accessories");
    // The keep accessory of 1.0.0 is still there.
    const res = await server.invoke({ model: "workflow:guarded", input: {} });
    expect(res.body.output).toBe("v1");
  });

  it("refuses an accessory over the size limit with 413 naming the limit, storing nothing", async () => {
    const big = "x".repeat(registryLimits.accessoryBytes + 1);
    await refused(
      [
        { key: "small", content: { ok: true } },
        { key: "huge", content: big },
      ],
      413,
      /accessories\[1\] \('huge'\) is 52428803 bytes of JSON; the limit is 52428800 bytes \(50 MiB\) per accessory/,
    );
    const res = await server.request("POST", "/v1/workflows/upload", {
      workflow_ref_name: "guarded",
      script: "def execute(ctx):\n    return 'v1'\n",
      accessories: [{ key: "huge", content: big }],
    });
    expect(res.body.error).toMatchObject({ type: "invalid_request_error", code: "request_too_large", param: "accessories[0]" });
  }, 60_000);
});
