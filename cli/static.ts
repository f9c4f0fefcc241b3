import { createReadStream, existsSync, statSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { extname, join, normalize, sep } from "node:path";

/** consoleDir is where `npm run build:console` writes the web console. */
export const consoleDir = new URL("../console/dist", import.meta.url).pathname;

const types: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".woff2": "font/woff2",
};

/** isRpcPath tells a `/package.Service/Method` RPC path from a console path. */
function isRpcPath(pathname: string): boolean {
  return /^\/[A-Za-z_][\w]*(\.[\w]+)+\/[\w]+$/.test(pathname);
}

/**
 * serveConsole answers GET/HEAD of non-RPC paths with the built web console (files under
 * console/dist, index.html for any other path); returns false for requests it leaves to the RPC router.
 */
export function serveConsole(req: IncomingMessage, res: ServerResponse, dir = consoleDir): boolean {
  if (req.method !== "GET" && req.method !== "HEAD") return false;
  let pathname: string;
  try {
    pathname = decodeURIComponent(new URL(req.url ?? "/", "http://localhost").pathname);
  } catch {
    // A malformed escape (GET /%E0%A4%A) threw out of the request handler and took the process down.
    res.writeHead(400, { "content-type": "text/plain; charset=utf-8" });
    res.end("malformed percent-encoding in the path\n");
    return true;
  }
  if (isRpcPath(pathname)) return false;
  const index = join(dir, "index.html");
  if (!existsSync(index)) {
    res.writeHead(404, { "content-type": "text/plain; charset=utf-8" });
    res.end("The web console is not built: run `npm run build:console`, then reload.\n");
    return true;
  }
  let file = normalize(join(dir, pathname));
  if (!file.startsWith(dir + sep) || !existsSync(file) || !statSync(file).isFile()) file = index;
  const immutable = file.includes(`${sep}assets${sep}`);
  res.writeHead(200, {
    "content-type": types[extname(file)] ?? "application/octet-stream",
    "content-length": String(statSync(file).size),
    "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache",
    "x-content-type-options": "nosniff",
  });
  if (req.method === "HEAD") res.end();
  else createReadStream(file).pipe(res);
  return true;
}
