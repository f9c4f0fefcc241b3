"""WorkflowContext: the `ctx` a workflow's execute(ctx) receives. Every call is synchronous."""
from __future__ import annotations

import inspect
import json
import logging
import time
import typing
import urllib.parse
from typing import Any, Callable, Iterator, Sequence

from .errors import DatastoreError, HttpError, ModelError, ShakerError, WorkflowError
from .frames import ACCESSORY, EMIT, LOG, write_frame
from .rpc import RpcClient, RpcError

MODELPROXY = "shaker.modelproxy.v1.ModelProxyService"
DATASTORE = "shaker.datastore.v1.DatastoreService"
EXECUTOR = "shaker.executor.v1.ExecutorService"
REGISTRY = "shaker.registry.v1.RegistryService"

_LEVELS = {"debug": "LOG_LEVEL_DEBUG", "info": "LOG_LEVEL_INFO", "warning": "LOG_LEVEL_WARNING",
           "warn": "LOG_LEVEL_WARNING", "error": "LOG_LEVEL_ERROR", "critical": "LOG_LEVEL_ERROR"}


class Channel:
    """Sends frames to the Executor over the run's dedicated pipe (never stdout)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: bytes, frame: dict[str, Any]) -> None:
        """Sends one frame of `kind` (frames.EMIT, LOG, ACCESSORY, RESULT, ERROR) with JSON fields."""
        self.send_raw(kind, json.dumps(frame, default=str, separators=(",", ":")).encode())

    def send_raw(self, kind: bytes, body: bytes) -> None:
        write_frame(self.fd, kind + body)


class _Usage:
    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens += int(usage.get("prompt_tokens") or usage.get("promptTokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or usage.get("completionTokens") or 0)

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class _Completions:
    def __init__(self, ctx: "WorkflowContext") -> None:
        self._ctx = ctx

    def create(self, messages: Sequence[dict[str, Any]] | None = None, model: str | None = None,
               intent: str | None = None, application: str | None = None, stream: bool = False,
               **params: Any) -> Any:
        """Makes a chat completion through the ModelProxy, tied to this run's session.

        `messages` defaults to ctx.messages. `action_type` and `application_ref_name` are accepted as
        aliases of `intent` and `application`; other params (temperature, max_tokens, tools,
        response_format, ...) pass through. Returns an OpenAI chat.completion dict, or with
        stream=True an iterator of chat.completion.chunk dicts. Raises ModelError.
        """
        intent = intent or params.pop("action_type", None)
        application = application or params.pop("application_ref_name", None)
        body: dict[str, Any] = dict(params)
        body["messages"] = list(messages if messages is not None else self._ctx.messages)
        if model:
            body["model"] = model
        request = {"body": body, "context": self._ctx._call_context(intent, application, body)}
        if stream:
            options = params.get("stream_options")
            return self._stream(request, isinstance(options, dict) and options.get("include_usage") is True)
        try:
            resp = self._ctx._rpc.call(MODELPROXY, "ChatCompletion", request, journal=True)
        except RpcError as e:
            raise ModelError(e.message or e.code) from None
        completion = resp.get("completion") or {}
        self._ctx._usage.add(completion.get("usage"))
        return completion

    def _stream(self, request: dict[str, Any], with_usage: bool) -> Iterator[dict[str, Any]]:
        try:
            for message in self._ctx._rpc.stream(MODELPROXY, "ChatCompletionStream", request, journal=True):
                chunk = message.get("chunk") or {}
                if chunk.get("usage"):
                    self._ctx._usage.add(chunk["usage"])
                # As OpenAI does: the usage-only chunk (no choices) only when asked for (stream_options).
                if chunk.get("choices") == [] and "usage" in chunk and not with_usage:
                    continue
                yield chunk
        except RpcError as e:
            raise ModelError(e.message or e.code) from None


class _Chat:
    def __init__(self, ctx: "WorkflowContext") -> None:
        self.completions = _Completions(ctx)


class _Embeddings:
    def __init__(self, ctx: "WorkflowContext") -> None:
        self._ctx = ctx

    def create(self, input: str | Sequence[str], model: str | None = None, **params: Any) -> dict[str, Any]:
        """Embeds text through the ModelProxy; returns an OpenAI embeddings response dict. Raises ModelError."""
        body: dict[str, Any] = dict(params)
        body["input"] = input if isinstance(input, str) else list(input)
        if model:
            body["model"] = model
        try:
            resp = self._ctx._rpc.call(MODELPROXY, "Embeddings", {"body": body, "context": self._ctx._call_context(None, None, body)},
                                       journal=True)
        except RpcError as e:
            raise ModelError(e.message or e.code) from None
        response = resp.get("response") or {}
        self._ctx._usage.add(response.get("usage"))
        return response


_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                               dict: "object", list: "array", tuple: "array"}


def _schema_of(annotation: Any) -> dict[str, Any]:
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, Sequence):
        args = typing.get_args(annotation)
        return {"type": "array", "items": _schema_of(args[0])} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    if origin is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _schema_of(options[0])
    if origin is typing.Literal:
        values = list(typing.get_args(annotation))
        return {"type": _JSON_TYPES.get(type(values[0]), "string"), "enum": values}
    return {"type": "string"}


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI tool definition of a Python function: name, docstring and annotated parameters."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        properties[name] = _schema_of(hints.get(name, str))
        if param.default is inspect.Parameter.empty:
            required.append(name)
    doc = inspect.getdoc(fn) or fn.__name__
    return {"type": "function", "function": {
        "name": fn.__name__, "description": doc,
        "parameters": {"type": "object", "properties": properties, "required": required}}}


class _Agents:
    def __init__(self, ctx: "WorkflowContext") -> None:
        self._ctx = ctx

    def run(self, messages: Sequence[dict[str, Any]] | None = None, tools: Sequence[Callable[..., Any]] = (),
            model: str | None = None, intent: str | None = None, system: str | None = None,
            max_iterations: int = 10, **params: Any) -> dict[str, Any]:
        """Runs a tool-calling loop: model, then the tool calls it asks for, then the model again,
        until it answers without tools or max_iterations model calls were made.

        Returns {"content", "messages", "iterations"}. A tool that raises is reported to the model
        as the error's text, so it can recover.
        """
        by_name = {fn.__name__: fn for fn in tools}
        history: list[dict[str, Any]] = []
        if system:
            history.append({"role": "system", "content": system})
        history.extend(messages if messages is not None else self._ctx.messages)
        specs = [tool_schema(fn) for fn in tools]
        content: Any = None
        iterations = 0
        while iterations < max_iterations:
            iterations += 1
            kwargs = dict(params)
            if specs:
                kwargs["tools"] = specs
            resp = self._ctx.chat.completions.create(messages=history, model=model, intent=intent, **kwargs)
            message = (resp.get("choices") or [{}])[0].get("message") or {}
            content = message.get("content")
            calls = message.get("tool_calls") or []
            entry: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                entry["tool_calls"] = calls
            history.append(entry)
            if not calls:
                break
            for call in calls:
                fn_info = call.get("function") or {}
                name = fn_info.get("name", "")
                try:
                    args = json.loads(fn_info.get("arguments") or "{}")
                    if name not in by_name:
                        raise KeyError(f"unknown tool {name!r}")
                    result = by_name[name](**args)
                    text = result if isinstance(result, str) else json.dumps(result, default=str)
                except Exception as e:  # the model sees the failure and may try again
                    text = f"error: {type(e).__name__}: {e}"
                history.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": text})
        return {"content": content, "messages": history, "iterations": iterations}


class HttpResponse:
    """An outbound HTTP response: status, headers, text, content, json(), ok."""

    def __init__(self, status: int, headers: dict[str, str], content: bytes, url: str) -> None:
        self.status = status
        self.status_code = status
        self.headers = headers
        self.content = content
        self.url = url

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {self.url}>"


class _Http:
    def __init__(self, ctx: "WorkflowContext") -> None:
        self._ctx = ctx

    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None, json: Any = None, data: Any = None,
                timeout: float = 30) -> HttpResponse:
        """Makes an outbound HTTP request and records it on the run (method, host, status, duration;
        never headers or bodies). Non-2xx answers are returned, not raised; a request that gets no
        answer raises HttpError.

        The run has no network of its own: the platform makes the request on its behalf, follows up
        to 5 redirects, and refuses internal addresses (loopback, private, link-local, ...) that its
        operator has not allowed; a refusal raises HttpError too. `timeout` bounds the whole exchange."""
        import base64
        import json as _json
        method = method.upper()
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params, doseq=True)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise HttpError(f"unsupported URL scheme in {url!r}: use http or https")
        host = parts.netloc.rpartition("@")[2]  # never the user-info, in messages as in the record
        hdrs = {str(k): str(v) for k, v in (headers or {}).items()}
        given = {k.lower() for k in hdrs}
        body: bytes | None = None
        if json is not None:
            body = _json.dumps(json).encode()
            if "content-type" not in given:
                hdrs["Content-Type"] = "application/json"
        elif data is not None:
            if isinstance(data, dict):
                body = urllib.parse.urlencode(data).encode()
                if "content-type" not in given:
                    hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                body = data.encode() if isinstance(data, str) else bytes(data)
        request: dict[str, Any] = {"method": method, "url": url, "headers": hdrs,
                                   "timeoutSeconds": 86400.0 if timeout is None else float(timeout)}
        if body:
            request["body"] = base64.b64encode(body).decode("ascii")
        try:
            # The platform answers within the timeout (or the run's remaining time): a little more for the call itself.
            resp = self._ctx._rpc.call(EXECUTOR, "Fetch", request, timeout=None if timeout is None else float(timeout) + 10,
                                       journal=True)
        except RpcError as e:
            raise HttpError(f"{method} {parts.scheme}://{host} failed: {e.message or e.code}") from None
        except OSError as e:
            raise HttpError(f"{method} {parts.scheme}://{host} failed: {type(e).__name__}: {e}") from None
        content = base64.b64decode(resp.get("body") or "")
        return HttpResponse(int(resp.get("status") or 0), dict(resp.get("headers") or {}), content, resp.get("url") or url)

    def get(self, url: str, **kw: Any) -> HttpResponse:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> HttpResponse:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> HttpResponse:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> HttpResponse:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> HttpResponse:
        return self.request("DELETE", url, **kw)


_MODES = {"keyword": "SEARCH_MODE_KEYWORD", "vector": "SEARCH_MODE_VECTOR", "hybrid": "SEARCH_MODE_HYBRID"}


def _record(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": r.get("id", ""), "text": r.get("text", ""), "metadata": r.get("metadata") or {}}


class _Datastore:
    def __init__(self, ctx: "WorkflowContext") -> None:
        self._ctx = ctx

    def _call(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._ctx._rpc.call(DATASTORE, method, request, journal=True)
        except RpcError as e:
            raise DatastoreError(e.message or e.code) from None

    def get(self, store: str, id: str) -> dict[str, Any] | None:
        """The record with this id ({id, text, metadata}), or None."""
        records = self._call("GetRecords", {"store": store, "ids": [id]}).get("records") or []
        return _record(records[0]) if records else None

    def get_many(self, store: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The records with these ids, in the order asked; absent ids are skipped."""
        records = self._call("GetRecords", {"store": store, "ids": list(ids)}).get("records") or []
        return [_record(r) for r in records]

    def search(self, store: str, query: str | None = None, vector: Sequence[float] | None = None,
               mode: str = "keyword", filter: dict[str, Any] | None = None, limit: int = 10) -> list[dict[str, Any]]:
        """Ranked records [{id, text, metadata, score}], best first. mode is keyword, vector or hybrid;
        with mode="vector" and only a query, the query is embedded through the ModelProxy."""
        if mode not in _MODES:
            raise DatastoreError(f"mode must be one of keyword, vector, hybrid, got {mode!r}")
        request: dict[str, Any] = {"store": store, "mode": _MODES[mode], "limit": limit}
        if query is not None:
            request["query"] = query
        if vector is not None:
            request["vector"] = list(vector)
        if filter:
            request["filter"] = filter
        hits = self._call("Search", request).get("records") or []
        return [{**_record(h), "score": h.get("score", 0.0)} for h in hits]

    def upsert(self, store: str, records: Sequence[dict[str, Any]]) -> int:
        """Writes records ({id, text, metadata?, vector?}); only where the binding allows writes.
        Returns the number written."""
        records = list(records)
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise DatastoreError(f"records[{i}]: must be a dict")
            if not r.get("id"):
                raise DatastoreError(f"records[{i}]: missing id")
            if r.get("metadata") is not None and not isinstance(r["metadata"], dict):
                raise DatastoreError(f"records[{i}]: metadata must be a JSON object")
        return int(self._call("UpsertRecords", {"store": store, "records": records}).get("upserted") or 0)


class _Workflows:
    def __init__(self, ctx: "WorkflowContext") -> None:
        self._ctx = ctx

    def run(self, ref: str, input: Any = None, messages: Sequence[dict[str, Any]] | None = None) -> Any:
        """Invokes another workflow of the same account in the same session and returns its output.
        `ref` may pin a version as "name@1.2.0". Raises WorkflowError when it fails."""
        if ref.startswith("workflow:"):
            ref = ref[len("workflow:"):]
        name, _, version = ref.partition("@")
        invocation: dict[str, Any] = {"workflowRefName": name, "version": version,
                                      "messages": list(messages or []), "sessionId": self._ctx.session_id}
        if input is not None:
            invocation["input"] = input
            invocation["hasInput"] = True
        try:
            resp = self._ctx._rpc.call(EXECUTOR, "Run", {"invocation": invocation}, journal=True)
        except RpcError as e:
            raise WorkflowError(f"workflow {ref!r} failed: {e.message or e.code}") from None
        result = resp.get("result") or {}
        self._ctx._usage.add(_snake_usage(result.get("usage")))
        return result.get("output")


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON-like value, object keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _snake_usage(usage: Any) -> dict[str, int]:
    usage = usage or {}
    return {"prompt_tokens": int(usage.get("promptTokens") or 0),
            "completion_tokens": int(usage.get("completionTokens") or 0)}


class _FrameHandler(logging.Handler):
    def __init__(self, ctx: "WorkflowContext") -> None:
        super().__init__(logging.DEBUG)
        self._ctx = ctx

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._ctx.log(message, level=record.levelname.lower())
        except Exception:
            self.handleError(record)


class WorkflowContext:
    """The runtime API of one run: its input, models, agents, HTTP, datastores, streaming and logs."""

    input: Any
    messages: list[dict[str, Any]]
    secrets: dict[str, str]
    metadata: dict[str, Any]
    env: dict[str, str]
    params: dict[str, Any]
    session_id: str
    run_id: str
    run_attempt: int

    def __init__(self, payload: dict[str, Any], channel: Channel, rpc: RpcClient,
                 accessories: dict[str, Any] | None = None) -> None:
        self.input = payload.get("input")
        self.messages = list(payload.get("messages") or [])
        self.secrets = dict(payload.get("secrets") or {})
        self.metadata = dict(payload.get("metadata") or {})
        self.env = dict(payload.get("env") or {})
        self.params = dict(payload.get("params") or {})
        self.session_id = payload.get("session_id", "")
        self.run_id = payload.get("run_id", "")
        # 1 on a run's first execution; 2 or more once it was resumed after a crash (its journaled ctx
        # calls answered again as before).
        self.run_attempt = int(payload.get("run_attempt") or 1)
        self.workflow = payload.get("workflow", "")
        self.version = payload.get("version", "")
        self._version_id = payload.get("version_id", "")
        self._channel = channel
        self._rpc = rpc
        self._usage = _Usage()
        self._emit_seq = 0
        self._accessories: dict[str, Any] = dict(accessories or {})  # the worker's cache for this version
        self.chat = _Chat(self)
        self.embeddings = _Embeddings(self)
        self.agents = _Agents(self)
        self.http = _Http(self)
        self.datastore = _Datastore(self)
        self.workflows = _Workflows(self)
        self._logger: logging.Logger | None = None

    @property
    def logger(self) -> logging.Logger:
        """A logging.Logger whose records become run logs (made on first use)."""
        if self._logger is None:
            logger = logging.getLogger("workflow")
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
            logger.handlers = [_FrameHandler(self)]
            self._logger = logger
        return self._logger

    def _call_context(self, intent: str | None, application: str | None, body: Any = None) -> dict[str, Any]:
        context: dict[str, Any] = {"sessionId": self.session_id, "intent": intent or "", "application": application or "",
                                   "runId": self.run_id, "workflowRefName": self.workflow}
        if self.secrets and body is not None:
            # Only the secret values this call's body carries, so the ModelProxy can blank them out of
            # its record: a secret travels no further than the body already takes it.
            texts = list(_strings(body))
            present = [v for v in self.secrets.values() if isinstance(v, str) and v and any(v in t for t in texts)]
            if present:
                context["redactValues"] = present
        return context

    def emit(self, value: Any) -> None:
        """Sends value (a str or anything JSON-serialisable) to a streaming caller at once; it is
        recorded on the run either way."""
        json.dumps(value)  # fail here, in the workflow, for a value that cannot be sent
        self._channel.send(EMIT, {"seq": self._emit_seq, "value": value, "time": time.time()})
        self._emit_seq += 1

    def log(self, message: Any, level: str = "info", **fields: Any) -> None:
        """Writes a structured log line to the run record; fields must be JSON-serialisable."""
        lvl = _LEVELS.get(str(level).lower())
        if lvl is None:
            raise ValueError(f"level must be one of debug, info, warning, error, got {level!r}")
        self._channel.send(LOG, {"level": lvl, "message": str(message), "fields": fields, "time": time.time()})

    def load_accessory(self, key: str, fallback_path: str | None = None) -> Any:
        """The parsed JSON accessory uploaded under key (case-insensitive, '-' and '_' alike).

        Cached per worker: the first run of a version that loads an accessory fetches it from the
        Registry, and every later run of that version forked by the same worker finds it in memory.
        fallback_path is read only when no such accessory exists; without one, KeyError."""
        normal = key.strip().lower().replace("-", "_")
        if normal in self._accessories:
            return self._accessories[normal]
        try:
            resp = self._rpc.call(REGISTRY, "GetAccessory", {"versionId": self._version_id, "key": key})
            value = (resp.get("accessory") or {}).get("content")
        except RpcError as e:
            if e.code != "not_found":
                raise ShakerError(f"could not load accessory {key!r}: {e.message or e.code}") from None
            if fallback_path is None:
                raise KeyError(f"no accessory {key!r} was uploaded with this workflow") from None
            with open(fallback_path, "r", encoding="utf-8") as f:
                return json.load(f)
        self._accessories[normal] = value
        self._channel.send(ACCESSORY, {"key": normal, "value": value})
        return value
