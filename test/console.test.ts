// The web console in a real browser (Debian's chromium through playwright-core): sign in, open a
// workflow, invoke it, see the run with its emitted values. Screenshots go to test-output/console/.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers.js";

const executablePath = "/usr/bin/chromium";
const shots = new URL("../test-output/console/", import.meta.url).pathname;
const root = new URL("..", import.meta.url).pathname;

let server: TestServer;
let browser: Browser;
let page: Page;

/** build runs `npm run build:console` asynchronously (a synchronous child would stall the in-process server). */
function build(): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [new URL("../node_modules/vite/bin/vite.js", import.meta.url).pathname, "build", "--config", "console/vite.config.ts"],
      {
        cwd: root,
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    let err = "";
    child.stderr.on("data", (b: Buffer) => (err += b.toString()));
    child.on("error", reject);
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`console build failed: ${err}`))));
  });
}

const script = `from shaker import WorkflowContext

def execute(ctx: WorkflowContext):
    ctx.log("counting", upto=3)
    ctx.chat.completions.create(messages=[{"role": "user", "content": "count to three"}], intent="count")
    for i in range(3):
        ctx.emit({"tick": i})
    return {"hello": (ctx.input or {}).get("name", "world")}
`;

beforeAll(async () => {
  await build();
  server = await startTestServer();
  await server.upload("ticker", script);
}, 120_000);

afterAll(async () => {
  await server?.close();
});

describe("web console files", () => {
  it("is served at / as static files, without breaking RPC or REST 404s", async () => {
    const res = await fetch(server.url + "/");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/html");
    expect(res.headers.get("cache-control")).toBe("no-cache");
    const html = await res.text();
    const asset = /src="(\/assets\/[^"]+\.js)"/.exec(html)![1]!;
    const js = await fetch(server.url + asset);
    expect(js.headers.get("content-type")).toContain("javascript");
    expect(js.headers.get("cache-control")).toContain("immutable");
    const head = await fetch(server.url + asset, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers.get("content-length")).toBe(js.headers.get("content-length"));
    expect((await fetch(server.url + "/../../etc/passwd")).headers.get("content-type")).toContain("text/html");
    expect((await fetch(server.url + "/%E0%A4%A")).status).toBe(400);
    const rest = await server.request("GET", "/v1/nope");
    expect(rest.status).toBe(404);
    const rpc = await fetch(server.url + "/shaker.registry.v1.RegistryService/ListWorkflows", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${server.apiKey}` },
      body: "{}",
    });
    expect(rpc.status).toBe(200);
  });
});

// The browser tests need Debian's chromium on the host (playwright-core brings no browser): without
// it they cannot run at all, so they are left out, decided before any test runs.
describe.skipIf(!existsSync(executablePath))("web console in a browser", () => {
  beforeAll(async () => {
    mkdirSync(shots, { recursive: true });
    browser = await chromium.launch({
      executablePath,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
    page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
  });

  it("refuses a wrong key, then signs in with the right one", async () => {
    await page.goto(server.url + "/");
    await page.fill("input[name=api-key]", "sk-wrong");
    await page.click("#signin button");
    await page.waitForSelector("#signin-error");
    expect(await page.textContent("#signin-error")).toContain("not valid");
    await page.screenshot({ path: shots + "01-sign-in.png" });
    await page.fill("input[name=api-key]", server.apiKey);
    await page.click("#signin button");
    await page.waitForSelector("#workflows");
    expect(await page.textContent("#workflows")).toContain("ticker");
    await page.screenshot({ path: shots + "02-workflows.png" });
  });

  it("opens a workflow with its versions and highlighted source", async () => {
    await page.click("#workflows a:text('ticker')");
    await page.waitForSelector("pre.source");
    expect(await page.textContent("#versions")).toContain("1.0.0");
    expect(await page.textContent("pre.source")).toContain("def execute(ctx: WorkflowContext):");
    expect(await page.locator("pre.source .hljs-keyword").count()).toBeGreaterThan(0);
    await page.screenshot({ path: shots + "03-workflow.png", fullPage: true });
  });

  it("invokes it, streaming the emitted values, then shows the run", async () => {
    await page.fill("#invoke textarea[name=input]", '{"name": "Ada"}');
    await page.click("#invoke button[type=submit]");
    await page.waitForSelector("#invoke-result");
    expect(await page.locator("#invoke-emitted li").allTextContents()).toEqual(['{"tick":0}', '{"tick":1}', '{"tick":2}']);
    expect(await page.textContent("#invoke-result pre")).toContain('"hello": "Ada"');
    await page.screenshot({ path: shots + "04-invoke.png", fullPage: true });
    await page.click("#invoke-run-link");
    await page.waitForSelector("#run-emitted");
    expect(await page.locator("#run [data-status]").first().textContent()).toBe("succeeded");
    expect(await page.locator("#run-emitted li").allTextContents()).toEqual(['{"tick":0}', '{"tick":1}', '{"tick":2}']);
    expect(await page.textContent("#run-logs")).toContain("counting");
    expect(await page.locator("#run-calls tbody tr").count()).toBe(1);
    await page.screenshot({ path: shots + "05-run.png", fullPage: true });
  });

  it("lists the run among runs with its status and duration", async () => {
    await page.click("header a:text('Runs')");
    await page.waitForSelector("#runs");
    const row = page.locator("#runs tbody tr").first();
    expect(await row.textContent()).toContain("ticker@1.0.0");
    expect(await row.locator("[data-status]").textContent()).toBe("succeeded");
    expect(await row.textContent()).toMatch(/\d+ ms|\d+\.\d+ s/);
    await page.screenshot({ path: shots + "06-runs.png", fullPage: true });
  });

  it("shows a session as a timeline", async () => {
    const runs = await server.request("GET", "/v1/runs?workflow=ticker");
    const session = runs.body.data[0].session_id;
    expect((await server.request("GET", `/v1/sessions/${session}`)).status).toBe(200);
    await page.goto(`${server.url}/#/sessions/${session}`);
    await page.waitForSelector("#timeline li");
    expect(await page.textContent("#timeline")).toContain(runs.body.data[0].run_id);
    expect(await page.locator("#timeline [data-status]").first().textContent()).toBe("succeeded");
    expect(await page.textContent("#timeline")).toMatch(/model call \S+ \(count\) \d+ ms, \d+ tokens/);
    await page.screenshot({ path: shots + "07-session.png", fullPage: true });
  });
});
