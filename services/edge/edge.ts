import type { Clients } from "../shared/clients.js";
import { createTelemetry, SpanKind, type Telemetry, traceHeader, traceIdHeader } from "../shared/telemetry.js";
import { createChatRoute } from "./chat.js";
import { addClusterRoutes } from "./cluster.js";
import { addDatastoreRoutes } from "./datastores.js";
import { createBodyGuard } from "./guard.js";
import { HttpError, type Req, type Res, sendError, sendJson } from "./http.js";
import { addModelRoutes } from "./models.js";
import { createResponsesRoute } from "./responses.js";
import { EdgeRouter } from "./router.js";
import { addRunRoutes } from "./runs.js";
import { addSessionRoutes } from "./sessions.js";
import { addWorkflowRoutes } from "./workflows.js";

/** Options of createEdge. */
export interface EdgeOptions {
  clients: Clients;
  /** maxBodyBytes bounds request bodies (413 beyond). */
  maxBodyBytes: number;
  /** maxUploadBytes bounds workflow upload bodies, which carry accessories; default 128 MiB. */
  maxUploadBytes?: number;
  /** keepAliveMs is the SSE keep-alive interval. */
  keepAliveMs?: number;
  /** maxJsonDepth bounds how deeply a JSON body nests arrays and objects (400 beyond); default 64. */
  maxJsonDepth?: number;
  /**
   * authenticate checks a caller's credential headers (Authorization, X-Api-Key, the service token)
   * and rejects, with a ConnectError saying why, when they are not good: a body larger than
   * maxUnauthenticatedBodyBytes, or of unknown length, is read only after it resolved. Without it
   * only the presence of a credential is checked before such a body is read.
   */
  authenticate?: (headers: Headers) => Promise<unknown>;
  /** maxUnauthenticatedBodyBytes is the largest request body read before its caller's credential is checked; default 64 KiB. */
  maxUnauthenticatedBodyBytes?: number;
  /** telemetry traces each REST request as a server span, the parent of what it asks the services for. */
  telemetry?: Telemetry;
}

/** Edge answers the OpenAI-compatible and management REST routes; `handle` returns false for other paths. */
export interface Edge {
  router: EdgeRouter;
  handle(req: Req, res: Res): boolean;
}

const corsHeaders = {
  "access-control-allow-origin": "*",
  "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
  "access-control-allow-headers":
    "authorization, x-api-key, content-type, openai-organization, openai-project, x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout, x-stainless-helper-method, x-stainless-async, idempotency-key, last-event-id, traceparent, tracestate",
  "access-control-expose-headers": "x-request-id, retry-after, x-should-retry, x-trace-id",
  "access-control-max-age": "86400",
};

/** createEdge builds the REST translator onto the services' RPCs. */
export function createEdge(options: EdgeOptions): Edge {
  const router = new EdgeRouter();
  const { maxJsonDepth } = options;
  const telemetry = options.telemetry ?? createTelemetry({});
  const chat = createChatRoute({
    clients: options.clients,
    maxBodyBytes: options.maxBodyBytes,
    keepAliveMs: options.keepAliveMs,
    maxJsonDepth,
  });
  router.add("POST", "/v1/chat/completions", chat);
  router.add(
    "POST",
    "/v1/responses",
    createResponsesRoute({ clients: options.clients, maxBodyBytes: options.maxBodyBytes, keepAliveMs: options.keepAliveMs, maxJsonDepth }),
  );
  addModelRoutes(router, { clients: options.clients, maxBodyBytes: options.maxBodyBytes, maxJsonDepth });
  addSessionRoutes(router, options.clients);
  addWorkflowRoutes(router, {
    clients: options.clients,
    maxBodyBytes: options.maxBodyBytes,
    maxUploadBytes: options.maxUploadBytes ?? 128 * 1024 * 1024,
    maxJsonDepth,
  });
  addRunRoutes(router, options.clients, options.keepAliveMs ?? 15_000);
  addDatastoreRoutes(router, { clients: options.clients, maxBodyBytes: options.maxBodyBytes, maxJsonDepth });
  addClusterRoutes(router, options.clients);
  const guard = createBodyGuard({ authenticate: options.authenticate, maxUnauthenticatedBodyBytes: options.maxUnauthenticatedBodyBytes });

  /**
   * traceRequest makes a request a server span (a child of the caller's `traceparent`, if any), names
   * its trace in X-Trace-Id, and hands the span's own traceparent on to the services it calls.
   */
  function traceRequest(req: Req, res: Res, method: string, route: string): void {
    const span = telemetry.startSpan(`${method} ${route}`, {
      parent: typeof req.headers[traceHeader] === "string" ? req.headers[traceHeader] : null,
      kind: SpanKind.SERVER,
      attributes: { "http.request.method": method, "http.route": route },
    });
    if (!span) return;
    req.headers[traceHeader] = telemetry.traceparent(span);
    res.setHeader(traceIdHeader, span.spanContext().traceId);
    res.once("close", () => {
      span.setAttribute("http.response.status_code", res.statusCode);
      telemetry.end(span, res.statusCode >= 500 ? `HTTP ${res.statusCode}` : undefined);
    });
  }

  return {
    router,
    handle(req, res) {
      const url = new URL(req.url ?? "/", "http://localhost");
      if (!url.pathname.startsWith("/v1/") && url.pathname !== "/v1" && url.pathname !== "/healthz") return false;
      for (const [k, v] of Object.entries(corsHeaders)) res.setHeader(k, v);
      const method = req.method ?? "GET";
      if (url.pathname === "/healthz") {
        sendJson(res, 200, { ok: true });
        return true;
      }
      if (method === "OPTIONS") {
        res.writeHead(204);
        res.end();
        return true;
      }
      const found = router.match(method, url.pathname);
      if (!found) {
        sendError(res, new HttpError(404, `no route ${method} ${url.pathname}`, null, "not_found"));
        return true;
      }
      if ("allowed" in found) {
        res.setHeader("allow", found.allowed.join(", "));
        sendError(
          res,
          new HttpError(405, `${method} is not allowed on ${url.pathname}; use ${found.allowed.join(" or ")}`, null, "method_not_allowed"),
        );
        return true;
      }
      traceRequest(req, res, method, found.path);
      guard(req, res, "rest", () => {
        found.handler(req, res, found.params, url).catch((err: unknown) => {
          req.resume();
          sendError(res, err);
        });
      });
      return true;
    },
  };
}
