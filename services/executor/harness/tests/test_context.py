"""ctx as a workflow sees it, without a server: argument handling, frames, tool schemas."""
from __future__ import annotations

import json
import os
import unittest
from typing import Literal, Optional

from shaker.context import Channel, WorkflowContext, tool_schema
from shaker.frames import EMIT, LOG, FrameBuffer
from shaker.rpc import RpcClient


def make_ctx(payload: dict | None = None) -> tuple[WorkflowContext, int]:
    r, w = os.pipe()
    base = {"input": {"q": 1}, "messages": [{"role": "user", "content": "hi"}], "secrets": {"k": "s3cret"},
            "session_id": "sess", "run_id": "run", "rpc_url": "unix:/nonexistent", "token": "t"}
    ctx = WorkflowContext({**base, **(payload or {})}, Channel(w), RpcClient("unix:/nonexistent", "t"))
    return ctx, r


def frames(fd: int) -> list[bytes]:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    return FrameBuffer().feed(data)


class ContextTest(unittest.TestCase):
    def test_exposes_the_payload(self) -> None:
        ctx, _ = make_ctx()
        self.assertEqual((ctx.input, ctx.messages[0]["content"], ctx.secrets["k"], ctx.run_id), ({"q": 1}, "hi", "s3cret", "run"))

    def test_emit_sends_an_emit_frame_in_order(self) -> None:
        ctx, r = make_ctx()
        ctx.emit("a")
        ctx.emit({"b": 2})
        got = frames(r)
        self.assertEqual([f[:1] for f in got], [EMIT, EMIT])
        self.assertEqual([(json.loads(f[1:])["seq"], json.loads(f[1:])["value"]) for f in got], [(0, "a"), (1, {"b": 2})])

    def test_emit_refuses_what_json_cannot_carry(self) -> None:
        ctx, r = make_ctx()
        with self.assertRaises(TypeError):
            ctx.emit(object())
        self.assertEqual(frames(r), [])

    def test_log_checks_its_level(self) -> None:
        ctx, r = make_ctx()
        ctx.log("x", level="warn", n=1)
        with self.assertRaises(ValueError):
            ctx.log("x", level="loud")
        (frame,) = frames(r)
        self.assertEqual(frame[:1], LOG)
        self.assertEqual(json.loads(frame[1:])["level"], "LOG_LEVEL_WARNING")

    def test_call_context_names_only_the_secrets_a_body_carries(self) -> None:
        ctx, _ = make_ctx()
        self.assertNotIn("redactValues", ctx._call_context(None, None, {"messages": [{"content": "plain"}]}))
        self.assertEqual(ctx._call_context("i", None, {"messages": [{"content": "key s3cret"}]})["redactValues"], ["s3cret"])


class ToolSchemaTest(unittest.TestCase):
    def test_derives_an_openai_tool_from_a_function(self) -> None:
        def lookup(city: str, days: int = 1, unit: Literal["c", "f"] = "c", tags: Optional[list[str]] = None) -> str:
            """Weather for a city."""
            return ""

        fn = tool_schema(lookup)["function"]
        self.assertEqual(fn["name"], "lookup")
        self.assertEqual(fn["description"], "Weather for a city.")
        props = fn["parameters"]["properties"]
        self.assertEqual(props["city"], {"type": "string"})
        self.assertEqual(props["days"], {"type": "integer"})
        self.assertEqual(props["unit"], {"type": "string", "enum": ["c", "f"]})
        self.assertEqual(props["tags"], {"type": "array", "items": {"type": "string"}})
        self.assertEqual(fn["parameters"]["required"], ["city"])


if __name__ == "__main__":
    unittest.main()
