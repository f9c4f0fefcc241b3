import type { Req, Res } from "./http.js";

/** Route handles one matched request; params are the pattern's named segments, decoded. */
export type RouteHandler = (req: Req, res: Res, params: Record<string, string>, url: URL) => Promise<void>;

interface Route {
  method: string;
  path: string;
  pattern: RegExp;
  names: string[];
  handler: RouteHandler;
}

/** EdgeRouter matches REST routes such as `GET /v1/workflows/:ref`. */
export class EdgeRouter {
  private routes: Route[] = [];

  /** list returns every registered route as method and path pattern, in registration order. */
  list(): { method: string; path: string }[] {
    return this.routes.map((r) => ({ method: r.method, path: r.path }));
  }

  add(method: string, path: string, handler: RouteHandler): this {
    const names: string[] = [];
    const pattern = new RegExp(
      "^" +
        path.replace(/:([a-zA-Z_]+)/g, (_, name: string) => {
          names.push(name);
          return "([^/]+)";
        }) +
        "/?$",
    );
    this.routes.push({ method, path, pattern, names, handler });
    return this;
  }

  /** match finds the route for a request; `allowed` lists the methods of a path matched by another method. */
  match(
    method: string,
    pathname: string,
  ): { handler: RouteHandler; params: Record<string, string>; path: string } | { allowed: string[] } | undefined {
    const allowed: string[] = [];
    for (const route of this.routes) {
      const m = route.pattern.exec(pathname);
      if (!m) continue;
      if (route.method !== method) {
        allowed.push(route.method);
        continue;
      }
      const params: Record<string, string> = {};
      route.names.forEach((name, i) => {
        try {
          params[name] = decodeURIComponent(m[i + 1]);
        } catch {
          params[name] = m[i + 1];
        }
      });
      return { handler: route.handler, params, path: route.path };
    }
    return allowed.length > 0 ? { allowed } : undefined;
  }
}
