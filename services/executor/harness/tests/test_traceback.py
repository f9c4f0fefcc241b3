"""A run's traceback (runtime.format_traceback): the workflow's frames with their source lines, the
frames of what it called, and none of the harness's own."""
from __future__ import annotations

import json
import linecache
import marshal
import os
import types
import unittest

from shaker import runtime

HARNESS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(runtime.__file__)))

SCRIPT = """import json


def helper(x):
    return json.loads(x)


def execute(ctx):
    value = 1
    raise ValueError(f"boom {value}")


def execute_decode(ctx):
    return helper("{not json")


def execute_ctx(ctx):
    return ctx.fail()
"""


class FakeCtx:
    """Stands for WorkflowContext: a method whose frame is the harness's (this file is in its directory)."""

    def fail(self) -> None:
        raise RuntimeError("the harness refused")


def raised(function: str, source: str = SCRIPT, register: bool = True) -> str:
    """Runs one function of the script as runtime.run does and returns the traceback it would send."""
    code = compile(source, runtime.WORKFLOW_FILE, "exec")
    # As the worker hands it over: marshalled, with its source.
    code, source = marshal.loads(marshal.dumps((code, source)))
    linecache.cache.pop(runtime.WORKFLOW_FILE, None)
    if register:
        runtime.register_source(source)
    module = types.ModuleType("workflow")
    exec(code, module.__dict__)
    try:
        module.__dict__[function](FakeCtx())
    except BaseException as e:  # noqa: BLE001 - as runtime.run
        return runtime.format_traceback(e, source if register else None)
    raise AssertionError("the workflow did not raise")


class FormatTracebackTest(unittest.TestCase):
    def tearDown(self) -> None:
        linecache.cache.pop(runtime.WORKFLOW_FILE, None)

    def test_shows_the_workflow_frame_with_its_source_line(self) -> None:
        tb = raised("execute")
        self.assertIn('File "workflow.py", line 10, in execute\n    raise ValueError(f"boom {value}")\n', tb)
        self.assertTrue(tb.startswith("Traceback (most recent call last):\n"), tb)
        self.assertTrue(tb.endswith("ValueError: boom 1\n"), tb)

    def test_hides_every_harness_frame_and_path(self) -> None:
        for function in ("execute", "execute_decode", "execute_ctx"):
            tb = raised(function)
            self.assertNotIn(HARNESS_DIR, tb, function)
            self.assertNotIn("runtime.py", tb, function)
            self.assertNotIn("test_traceback.py", tb, function)
        # The harness's frame under the workflow's call is gone; the workflow's call stays, with its line.
        tb = raised("execute_ctx")
        self.assertIn('File "workflow.py", line 18, in execute_ctx\n    return ctx.fail()\n', tb)
        self.assertTrue(tb.endswith("RuntimeError: the harness refused\n"), tb)

    def test_keeps_the_frames_of_the_libraries_the_workflow_called(self) -> None:
        tb = raised("execute_decode")
        self.assertIn('File "workflow.py", line 14, in execute_decode\n    return helper("{not json")\n', tb)
        self.assertIn('File "workflow.py", line 5, in helper\n    return json.loads(x)\n', tb)
        decoder = os.path.abspath(json.decoder.__file__)
        self.assertIn(f'File "{decoder}"', tb)  # the standard library as a plain traceback shows it
        self.assertIn("json.decoder.JSONDecodeError", tb)

    def test_source_registered_again_when_the_workflow_cleared_linecache(self) -> None:
        code = compile(SCRIPT, runtime.WORKFLOW_FILE, "exec")
        module = types.ModuleType("workflow")
        exec(code, module.__dict__)
        runtime.register_source(SCRIPT)
        linecache.clearcache()
        try:
            module.__dict__["execute"](None)
        except ValueError as e:
            tb = runtime.format_traceback(e, SCRIPT)
        self.assertIn('    raise ValueError(f"boom {value}")\n', tb)

    def test_chained_exceptions_are_pruned_too(self) -> None:
        source = "def execute(ctx):\n    try:\n        ctx.fail()\n    except RuntimeError as e:\n        raise KeyError('k') from e\n"
        tb = raised("execute", source)
        self.assertIn("RuntimeError: the harness refused", tb)
        self.assertIn("The above exception was the direct cause", tb)
        self.assertIn("    ctx.fail()\n", tb)
        self.assertIn("    raise KeyError('k') from e\n", tb)
        self.assertNotIn(HARNESS_DIR, tb)

    def test_an_error_of_the_harness_alone_is_its_type_and_message(self) -> None:
        try:
            raise TypeError("the script defines no execute(ctx)")
        except TypeError as e:
            tb = runtime.format_traceback(e)
        self.assertEqual(tb, "TypeError: the script defines no execute(ctx)\n")

    def test_library_paths_are_shown_from_the_package_down(self) -> None:
        self.assertEqual(runtime._shown_path("/srv/app/venv/lib/python3.11/site-packages/requests/api.py"), "requests/api.py")
        self.assertEqual(runtime._shown_path("/usr/lib/python3/dist-packages/yaml/__init__.py"), "yaml/__init__.py")
        self.assertIsNone(runtime._shown_path(os.path.join(HARNESS_DIR, "shaker", "context.py")))
        self.assertEqual(runtime._shown_path("workflow.py"), "workflow.py")
        self.assertEqual(runtime._shown_path("<frozen importlib._bootstrap>"), "<frozen importlib._bootstrap>")


if __name__ == "__main__":
    unittest.main()
