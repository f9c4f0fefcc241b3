import { spawnSync } from "node:child_process";
import { mkdtempSync, statSync, existsSync, writeFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { listen, type Handler, type Listener } from "../services/shared/listener.js";

const echo: Handler = (req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(`hello ${req.httpVersion} ${req.url}`);
};

/** h1Unix sends one HTTP/1.1 GET over a Unix socket and returns the status and body. */
function h1Unix(path: string, url: string, agent?: http.Agent): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: path, path: url, agent }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("listener on a Unix socket", () => {
  const open: Listener[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((l) => l.close()));
  });

  it("serves HTTP/1.1 keep-alive and h2c on the socket, mode 0666, removed on close", async () => {
    const path = join(mkdtempSync(join(tmpdir(), "shaker-sock-")), "shaker.sock");
    const l = await listen(echo, { path });
    expect(l.path).toBe(path);
    expect(statSync(path).isSocket()).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o666);

    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    expect(await h1Unix(path, "/a", agent)).toEqual({ status: 200, body: "hello 1.1 /a" });
    expect(await h1Unix(path, "/b", agent)).toEqual({ status: 200, body: "hello 1.1 /b" });
    agent.destroy();

    const session = http2.connect("http://localhost", { createConnection: () => net.connect(path) });
    const body = await new Promise<string>((resolve, reject) => {
      const stream = session.request({ ":path": "/c" });
      let text = "";
      stream.setEncoding("utf8");
      stream.on("data", (c: string) => (text += c));
      stream.on("end", () => resolve(text));
      stream.on("error", reject);
    });
    session.close();
    expect(body).toBe("hello 2.0 /c");

    await l.close();
    open.length = 0;
    expect(existsSync(path)).toBe(false);
  });

  it("replaces a stale socket file but refuses a live one or a regular file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shaker-sock-"));
    const path = join(dir, "shaker.sock");
    // A stale socket: left by a server process that was killed while listening.
    spawnSync(process.execPath, ["-e", `require("net").createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, "SIGKILL"))`]);
    expect(statSync(path).isSocket()).toBe(true);

    const l = await listen(echo, { path });
    open.push(l);
    expect(await h1Unix(path, "/x")).toEqual({ status: 200, body: "hello 1.1 /x" });
    await expect(listen(echo, { path })).rejects.toThrow(/EADDRINUSE/);

    const file = join(dir, "not-a-socket");
    writeFileSync(file, "keep me");
    await expect(listen(echo, { path: file })).rejects.toThrow();
    expect(existsSync(file)).toBe(true);
  });

  it("keeps listen(handler, port, host) working", async () => {
    const l = await listen(echo, 0, "127.0.0.1");
    open.push(l);
    const res = await fetch(l.url + "/tcp");
    expect(await res.text()).toBe("hello 1.1 /tcp");
  });
});
