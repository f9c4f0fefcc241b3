"""What a forked child does: set up its process, build ctx, run execute(ctx), report, exit."""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import traceback
import types
from typing import Any

from .context import Channel, WorkflowContext
from .rpc import RpcClient


def _limit(kind: int, value: int | None) -> None:
    if not value:
        return
    try:
        soft, hard = resource.getrlimit(kind)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (cap, cap))
    except (ValueError, OSError):
        pass


def _setup_process(payload: dict[str, Any], frames_fd: int, out_fd: int, err_fd: int, close_fds: list[int]) -> None:
    os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except AttributeError:
        pass
    limits = payload.get("limits") or {}
    _limit(resource.RLIMIT_AS, limits.get("memory_bytes"))
    _limit(resource.RLIMIT_CPU, limits.get("cpu_seconds"))
    _limit(resource.RLIMIT_NOFILE, limits.get("open_files"))
    _limit(resource.RLIMIT_FSIZE, limits.get("file_bytes"))
    _limit(resource.RLIMIT_NPROC, limits.get("processes"))
    os.environ.update(payload.get("env") or {})


def child_main(code: Any, payload: dict[str, Any], frames_fd: int, out_fd: int, err_fd: int, close_fds: list[int]) -> None:
    """Runs one workflow in this (freshly forked) process and exits; never returns."""
    _setup_process(payload, frames_fd, out_fd, err_fd, close_fds)
    channel = Channel(frames_fd)
    status = 0
    try:
        ctx = WorkflowContext(payload, channel, RpcClient(payload["rpc_url"], payload["token"]))
        module = types.ModuleType("workflow")
        module.__file__ = "workflow.py"
        sys.modules["workflow"] = module
        exec(code, module.__dict__)
        execute = module.__dict__.get("execute")
        if not callable(execute):
            raise TypeError("the script defines no execute(ctx)")
        output = execute(ctx)
        try:
            body = json.dumps(output)
        except (TypeError, ValueError) as e:
            raise TypeError(f"execute returned a value that is not JSON-serialisable: {e}") from None
        sys.stdout.flush()
        sys.stderr.flush()
        frame = '{"t":"result","output":' + body + ',"usage":' + json.dumps(ctx._usage.as_dict()) + "}"
        channel.send_raw(frame.encode())
    except BaseException as e:  # SystemExit and KeyboardInterrupt are failures of the run too
        status = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        tb = traceback.format_exc()
        try:
            channel.send({"t": "error", "type": type(e).__name__, "message": str(e), "traceback": tb})
        except Exception:
            pass
    os._exit(status)
