// Shaker's web console: a small Preact app over the REST edge (spec section 4), signed in with an API
// key kept in sessionStorage. Pages: workflows (versions, highlighted source, invoke form with the
// live stream), runs (status, duration, logs, emitted values, model calls; refreshed while running),
// and a session's timeline of runs and model calls.
import hljs from "highlight.js/lib/core";
import python from "highlight.js/lib/languages/python";
import { type ComponentChildren, h, render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./style.css";

hljs.registerLanguage("python", python);

const keyStorage = "shaker-api-key";

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function api(key: string, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  // REST errors are {"error": {"message"}}; Connect errors are {"code", "message"}.
  if (!res.ok) throw new ApiError(res.status, json?.error?.message ?? json?.message ?? (text || res.statusText));
  return json;
}

function useRoute(): string[] {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
}

/** useApi loads a path (and again every `refreshMs` while `keepRefreshing` says so). */
function useApi(key: string, path: string | null, refreshMs = 0, keepRefreshing: (d: any) => boolean = () => false) {
  const [state, setState] = useState<{ data?: any; error?: string; loading: boolean }>({ loading: true });
  useEffect(() => {
    if (!path) return;
    let stop = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const load = () =>
      api(key, "GET", path).then(
        (d) => {
          if (stop) return;
          setState({ data: d, loading: false });
          if (refreshMs && keepRefreshing(d)) timer = setTimeout(load, refreshMs);
        },
        (e: Error) => !stop && setState({ error: e.message, loading: false }),
      );
    setState({ loading: true });
    void load();
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, [key, path]);
  return state;
}

const ms = (n: number | undefined) =>
  n === undefined || n === null ? "-" : n < 1000 ? `${Math.round(n)} ms` : `${(n / 1000).toFixed(2)} s`;
const when = (t: string | undefined) => (t ? new Date(t).toLocaleString() : "-");
const text = (v: unknown) => (typeof v === "string" ? v : JSON.stringify(v));
/** status shows a run status; "RUN_STATUS_SUCCEEDED" (raw enum names) reads as "succeeded" too. */
const status = (raw: string) => {
  const s = String(raw ?? "")
    .replace(/^RUN_STATUS_/, "")
    .toLowerCase();
  return h("span", { class: `status status-${s}`, "data-status": s }, s);
};

function Loading(props: { state: { error?: string; loading: boolean }; children: () => ComponentChildren }) {
  if (props.state.error) return h("p", { class: "error" }, props.state.error);
  if (props.state.loading) return h("p", { class: "muted" }, "loading…");
  return h("div", null, props.children());
}

function SignIn(props: { onKey: (k: string) => void }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState("");
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      await api(key.trim(), "GET", "/v1/workflows?limit=1");
      sessionStorage.setItem(keyStorage, key.trim());
      props.onKey(key.trim());
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? "That API key is not valid." : (err as Error).message);
    }
  };
  return h(
    "main",
    null,
    h("h1", null, "Sign in to Shaker"),
    h(
      "form",
      { class: "card", onSubmit: submit, id: "signin" },
      h("p", null, "Paste an API key (the one `shaker serve` printed, or one from `shaker keys create`)."),
      h("input", {
        type: "password",
        name: "api-key",
        placeholder: "sk-…",
        value: key,
        onInput: (e: Event) => setKey((e.target as HTMLInputElement).value),
      }),
      h("p", null, h("button", { type: "submit" }, "Sign in")),
      error && h("p", { class: "error", id: "signin-error" }, error),
    ),
  );
}

function Workflows(props: { apiKey: string }) {
  const state = useApi(props.apiKey, "/v1/workflows?limit=100");
  return h(
    "main",
    null,
    h("h1", null, "Workflows"),
    h(Loading, {
      state,
      children: () =>
        state.data.data.length === 0
          ? h("p", null, "No workflows yet. Upload one: ", h("code", null, "shaker upload examples/hello.py"))
          : h(
              "table",
              { id: "workflows" },
              h(
                "thead",
                null,
                h(
                  "tr",
                  null,
                  h("th", null, "Workflow"),
                  h("th", null, "Latest version"),
                  h("th", null, "Updated"),
                  h("th", null, "Description"),
                ),
              ),
              h(
                "tbody",
                null,
                state.data.data.map((w: any) =>
                  h(
                    "tr",
                    { key: w.workflow_ref_name },
                    h("td", null, h("a", { href: `#/workflows/${encodeURIComponent(w.workflow_ref_name)}` }, w.workflow_ref_name)),
                    h("td", null, w.latest_version),
                    h("td", null, when(w.updated_at)),
                    h("td", null, w.description),
                  ),
                ),
              ),
            ),
    }),
  );
}

/** Source shows a version's script, fetched with the Registry's ResolveWorkflow RPC (Connect JSON on the same port). */
function Source(props: { apiKey: string; ref: string; version: string }) {
  const [state, setState] = useState<{ code?: string; error?: string }>({});
  useEffect(() => {
    let stop = false;
    setState({});
    api(props.apiKey, "POST", "/shaker.registry.v1.RegistryService/ResolveWorkflow", {
      workflowRefName: props.ref,
      version: props.version,
    }).then(
      (d) => !stop && setState({ code: d.version?.script ?? "" }),
      (e: Error) => !stop && setState({ error: e.message }),
    );
    return () => {
      stop = true;
    };
  }, [props.apiKey, props.ref, props.version]);
  if (state.error) return h("p", { class: "error" }, state.error);
  if (state.code === undefined) return h("p", { class: "muted" }, "loading…");
  const html = hljs.highlight(state.code, { language: "python" }).value;
  return h("pre", { class: "source hljs" }, h("code", { dangerouslySetInnerHTML: { __html: html } }));
}

/** readStream reads the SSE answer of an invoke, calling `onEvent` per JSON event. */
async function readStream(res: Response, onEvent: (e: any) => void): Promise<void> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim())
        .join("\n");
      if (!data || data === "[DONE]") continue;
      onEvent(JSON.parse(data));
    }
  }
}

function InvokeForm(props: { apiKey: string; ref: string }) {
  const [input, setInput] = useState("{}");
  const [stream, setStream] = useState(true);
  const [emitted, setEmitted] = useState<unknown[]>([]);
  const [result, setResult] = useState<{ output?: unknown; run_id?: string; session_id?: string } | null>(null);
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setEmitted([]);
    setResult(null);
    setError("");
    let parsed: unknown;
    try {
      parsed = JSON.parse(input);
    } catch (err) {
      setError(`input is not JSON: ${(err as Error).message}`);
      return;
    }
    setBusy(true);
    try {
      const res = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { authorization: `Bearer ${props.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model: `workflow:${props.ref}`, input: parsed, stream }),
      });
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        throw new Error(body?.error?.message ?? res.statusText);
      }
      if (stream && (res.headers.get("content-type") ?? "").includes("text/event-stream")) {
        await readStream(res, (ev) => {
          if (ev.error) setError(ev.error.message);
          else if ("emitted" in ev) setEmitted((xs) => [...xs, ev.emitted]);
          else if (ev.choices?.[0]?.finish_reason === "stop") setResult(ev);
        });
      } else {
        setResult(await res.json());
      }
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return h(
    "form",
    { class: "card", id: "invoke", onSubmit: submit },
    h("h2", null, "Invoke"),
    h(
      "label",
      null,
      "input (JSON)",
      h("textarea", { name: "input", value: input, onInput: (e: Event) => setInput((e.target as HTMLTextAreaElement).value) }),
    ),
    h(
      "p",
      null,
      h(
        "label",
        null,
        h("input", {
          type: "checkbox",
          name: "stream",
          checked: stream,
          style: "width:auto",
          onChange: (e: Event) => setStream((e.target as HTMLInputElement).checked),
        }),
        " stream",
      ),
      " ",
      h("button", { type: "submit", disabled: busy }, busy ? "Running…" : "Run"),
    ),
    emitted.length > 0 &&
      h(
        "div",
        null,
        h("h2", null, "Emitted"),
        h(
          "ol",
          { class: "emitted", id: "invoke-emitted" },
          emitted.map((v, i) => h("li", { key: i }, text(v))),
        ),
      ),
    result &&
      h(
        "div",
        { id: "invoke-result" },
        h("h2", null, "Output"),
        h("pre", null, JSON.stringify(result.output, null, 2)),
        h(
          "p",
          null,
          "run ",
          h("a", { href: `#/runs/${result.run_id}`, id: "invoke-run-link" }, result.run_id),
          " · session ",
          h("a", { href: `#/sessions/${result.session_id}` }, result.session_id),
        ),
      ),
    error && h("p", { class: "error", id: "invoke-error" }, error),
  );
}

function Workflow(props: { apiKey: string; ref: string; version?: string }) {
  const state = useApi(props.apiKey, `/v1/workflows/${encodeURIComponent(props.ref)}`);
  return h(
    "main",
    null,
    h("h1", null, "Workflow ", h("code", null, props.ref)),
    h(Loading, {
      state,
      children: () => {
        const w = state.data.data;
        const versions: any[] = w.versions ?? [];
        const shown =
          versions.find((v) => v.version === props.version) ?? versions.find((v) => v.version === w.latest_version) ?? versions[0];
        return h(
          "div",
          null,
          w.description && h("p", null, w.description),
          h(InvokeForm, { apiKey: props.apiKey, ref: props.ref }),
          h("h2", null, "Versions"),
          h(
            "table",
            { id: "versions" },
            h(
              "thead",
              null,
              h(
                "tr",
                null,
                h("th", null, "Version"),
                h("th", null, "Created"),
                h("th", null, "Mode"),
                h("th", null, "Timeout"),
                h("th", null, "Notes"),
              ),
            ),
            h(
              "tbody",
              null,
              versions.map((v) =>
                h(
                  "tr",
                  { key: v.version },
                  h(
                    "td",
                    null,
                    h("a", { href: `#/workflows/${encodeURIComponent(props.ref)}/${v.version}` }, v.version),
                    v === shown ? " (shown)" : "",
                  ),
                  h("td", null, when(v.created_at)),
                  h(
                    "td",
                    null,
                    String(v.execution_mode ?? "")
                      .replace("EXECUTION_MODE_", "")
                      .toLowerCase(),
                  ),
                  h("td", null, `${v.timeout_seconds}s`),
                  h("td", null, v.notes),
                ),
              ),
            ),
          ),
          shown && h("h2", null, `Source of ${shown.version}`),
          shown && h(Source, { apiKey: props.apiKey, ref: props.ref, version: shown.version }),
          h("p", null, h("a", { href: `#/runs?workflow=${encodeURIComponent(props.ref)}` }, "Runs of this workflow")),
        );
      },
    }),
  );
}

function Runs(props: { apiKey: string; workflow?: string }) {
  const q = props.workflow ? `?workflow=${encodeURIComponent(props.workflow)}&limit=100` : "?limit=100";
  const state = useApi(props.apiKey, `/v1/runs${q}`, 2000, (d) => d.data.some((r: any) => r.status === "running" || r.status === "queued"));
  return h(
    "main",
    null,
    h("h1", null, props.workflow ? `Runs of ${props.workflow}` : "Runs"),
    h(Loading, {
      state,
      children: () =>
        h(
          "table",
          { id: "runs" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              h("th", null, "Run"),
              h("th", null, "Workflow"),
              h("th", null, "Status"),
              h("th", null, "Duration"),
              h("th", null, "Started"),
              h("th", null, "Session"),
            ),
          ),
          h(
            "tbody",
            null,
            state.data.data.map((r: any) =>
              h(
                "tr",
                { key: r.run_id },
                h("td", null, h("a", { href: `#/runs/${r.run_id}` }, r.run_id)),
                h("td", null, `${r.workflow_ref_name}@${r.version}`),
                h("td", null, status(r.status)),
                h("td", null, ms(r.duration_ms)),
                h("td", null, when(r.created_at)),
                h("td", null, h("a", { href: `#/sessions/${r.session_id}` }, r.session_id)),
              ),
            ),
          ),
        ),
    }),
  );
}

function Run(props: { apiKey: string; id: string }) {
  const state = useApi(
    props.apiKey,
    `/v1/runs/${encodeURIComponent(props.id)}`,
    1000,
    (d) => d.data.status === "running" || d.data.status === "queued",
  );
  return h(
    "main",
    null,
    h("h1", null, "Run ", h("code", null, props.id)),
    h(Loading, {
      state,
      children: () => {
        const r = state.data.data;
        return h(
          "div",
          { id: "run" },
          h(
            "table",
            null,
            h(
              "tbody",
              null,
              h(
                "tr",
                null,
                h("th", null, "workflow"),
                h("td", null, h("a", { href: `#/workflows/${r.workflow_ref_name}` }, `${r.workflow_ref_name}@${r.version}`)),
              ),
              h("tr", null, h("th", null, "status"), h("td", null, status(r.status))),
              h("tr", null, h("th", null, "duration"), h("td", null, ms(r.duration_ms))),
              h("tr", null, h("th", null, "session"), h("td", null, h("a", { href: `#/sessions/${r.session_id}` }, r.session_id))),
              h("tr", null, h("th", null, "started"), h("td", null, when(r.created_at))),
            ),
          ),
          r.error?.message &&
            h(
              "div",
              null,
              h("h2", null, "Error"),
              h("pre", { class: "error" }, `${r.error.type}: ${r.error.message}\n\n${r.error.traceback ?? ""}`),
            ),
          h("h2", null, "Input"),
          h("pre", null, JSON.stringify(r.input, null, 2)),
          r.output !== undefined &&
            r.output !== null &&
            h("div", null, h("h2", null, "Output"), h("pre", { id: "run-output" }, JSON.stringify(r.output, null, 2))),
          h("h2", null, `Emitted values (${(r.emitted ?? []).length})`),
          h(
            "ol",
            { class: "emitted", id: "run-emitted" },
            (r.emitted ?? []).map((e: any) => h("li", { key: e.seq }, text(e.value))),
          ),
          h("h2", null, `Logs (${(r.logs ?? []).length})`),
          h(
            "pre",
            { id: "run-logs" },
            (r.logs ?? [])
              .map(
                (l: any) =>
                  `${l.time ?? ""} ${String(l.level).padEnd(7)} ${l.message}${l.fields && Object.keys(l.fields).length ? " " + JSON.stringify(l.fields) : ""}`,
              )
              .join("\n"),
          ),
          h("h2", null, `Model calls (${(r.model_calls ?? []).length})`),
          h(
            "table",
            { id: "run-calls" },
            h(
              "thead",
              null,
              h(
                "tr",
                null,
                h("th", null, "Model"),
                h("th", null, "Intent"),
                h("th", null, "Status"),
                h("th", null, "Latency"),
                h("th", null, "Tokens"),
              ),
            ),
            h(
              "tbody",
              null,
              (r.model_calls ?? []).map((c: any) =>
                h(
                  "tr",
                  { key: c.call_id },
                  h("td", null, c.model),
                  h("td", null, c.intent),
                  h("td", null, c.status),
                  h("td", null, ms(c.latency_ms)),
                  h("td", null, String(c.total_tokens ?? 0)),
                ),
              ),
            ),
          ),
        );
      },
    }),
  );
}

function Session(props: { apiKey: string; id: string }) {
  const state = useApi(props.apiKey, `/v1/sessions/${encodeURIComponent(props.id)}`);
  return h(
    "main",
    null,
    h("h1", null, "Session ", h("code", null, props.id)),
    h(Loading, {
      state,
      children: () => {
        const items: any[] = state.data.data.items ?? [];
        return h(
          "ol",
          { class: "timeline", id: "timeline" },
          items.map((i, n) =>
            h(
              "li",
              { key: n },
              h("span", { class: "muted" }, when(i.time), " "),
              i.type === "run"
                ? h(
                    "span",
                    null,
                    "run ",
                    h("a", { href: `#/runs/${i.run_id}` }, i.run_id),
                    ` ${i.workflow_ref_name ?? ""} `,
                    status(i.status ?? ""),
                    ` ${ms(i.duration_ms)}`,
                  )
                : h(
                    "span",
                    null,
                    `model call ${i.model ?? ""} (${i.intent || "no intent"}) ${ms(i.latency_ms)}, ${i.total_tokens ?? 0} tokens`,
                  ),
            ),
          ),
        );
      },
    }),
  );
}

function App() {
  const [key, setKey] = useState(sessionStorage.getItem(keyStorage) ?? "");
  const route = useRoute();
  if (!key) return h(SignIn, { onKey: setKey });
  const [page = "workflows", id, extra] = route;
  const workflowFilter = new URLSearchParams(location.hash.split("?")[1] ?? "").get("workflow") ?? undefined;
  let body: ComponentChildren;
  if (page === "workflows" && id) body = h(Workflow, { apiKey: key, ref: id, version: extra });
  else if (page.startsWith("runs") && id) body = h(Run, { apiKey: key, id });
  else if (page.startsWith("runs")) body = h(Runs, { apiKey: key, workflow: workflowFilter });
  else if (page === "sessions" && id) body = h(Session, { apiKey: key, id });
  else body = h(Workflows, { apiKey: key });
  const nav = (href: string, label: string, active: boolean) => h("a", { href, class: active ? "active" : "" }, label);
  return h(
    "div",
    null,
    h(
      "header",
      null,
      h("span", { class: "brand" }, "Shaker"),
      nav("#/workflows", "Workflows", page === "workflows"),
      nav("#/runs", "Runs", page.startsWith("runs")),
      h(
        "a",
        {
          class: "right",
          href: "#/",
          onClick: () => {
            sessionStorage.removeItem(keyStorage);
            setKey("");
          },
        },
        "Sign out",
      ),
    ),
    body,
  );
}

render(h(App, null), document.getElementById("app")!);
