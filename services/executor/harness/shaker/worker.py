"""The long-lived Python worker: preloads the harness, then forks one fresh child per run.

Protocol (never on stdout): the Executor writes frames to fd 3 and reads frames from fd 4. A frame
is a 4-byte big-endian length and a UTF-8 JSON body. Frames the worker sends are prefixed with the
run id and a newline, so the Executor can route them without the worker re-encoding child frames.

  Executor -> worker: {"t": "run", "id", "version_id", "source"?, "payload": {...}}
                      {"t": "source", "version_id", "source"}   (cache only)
  worker -> Executor: id\\n{"t": "started", "pid"}
                      id\\n<a child frame: emit, log, http, result, error, warning>
                      id\\n{"t": "output", "stream": "stdout"|"stderr", "data"}
                      id\\n{"t": "exit", "code", "signal", "output_truncated"}
"""
from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import struct
import sys
from typing import Any

IN_FD = 3
OUT_FD = 4
MAX_OUTPUT_BYTES = int(os.environ.get("SHAKER_MAX_OUTPUT_BYTES", str(1024 * 1024)))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


def send(run_id: str, body: bytes) -> None:
    payload = run_id.encode() + b"\n" + body
    write_all(OUT_FD, struct.pack(">I", len(payload)) + payload)


class Child:
    """A forked run as the worker sees it: its pipes, its buffers, and whether it has ended."""

    def __init__(self, run_id: str, pid: int, frames_fd: int, out_fd: int, err_fd: int) -> None:
        self.run_id = run_id
        self.pid = pid
        self.frames_fd = frames_fd
        self.frame_buf = b""
        self.open_fds = {frames_fd, out_fd, err_fd}
        self.output_bytes = 0
        self.output_truncated = False
        self.status: tuple[int, int] | None = None


class Worker:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.code_cache: dict[str, Any] = {}
        self.children: dict[int, Child] = {}  # by pid
        self.fd_owner: dict[int, tuple[Child, str]] = {}
        self.in_buf = b""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r = wake_r
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(IN_FD, selectors.EVENT_READ, "control")
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")

    # -- control frames ---------------------------------------------------------------------------

    def compile_source(self, version_id: str, source: str) -> Any:
        code = self.code_cache.get(version_id)
        if code is None:
            code = compile(source, "workflow.py", "exec")
            if len(self.code_cache) > 256:
                self.code_cache.clear()
            self.code_cache[version_id] = code
        return code

    def handle_control(self, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        if kind == "source":
            self.compile_source(frame["version_id"], frame["source"])
        elif kind == "run":
            self.start_run(frame)

    def start_run(self, frame: dict[str, Any]) -> None:
        run_id = frame["id"]
        try:
            code = self.code_cache.get(frame["version_id"])
            if code is None:
                if "source" not in frame:
                    raise RuntimeError("worker has no source for version " + frame["version_id"])
                code = self.compile_source(frame["version_id"], frame["source"])
        except SyntaxError as e:
            send(run_id, json.dumps({"t": "error", "type": "SyntaxError", "message": str(e), "traceback": ""}).encode())
            send(run_id, json.dumps({"t": "exit", "code": 1, "signal": 0, "output_truncated": False}).encode())
            return
        frames_r, frames_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            # The child: never returns to the worker's loop.
            try:
                os.close(frames_r)
                os.close(out_r)
                os.close(err_r)
                from shaker import runtime
                runtime.child_main(code, frame["payload"], frames_w, out_w, err_w, self.child_fds_to_close())
            finally:
                os._exit(70)
        os.close(frames_w)
        os.close(out_w)
        os.close(err_w)
        child = Child(run_id, pid, frames_r, out_r, err_r)
        self.children[pid] = child
        for fd, role in ((frames_r, "frames"), (out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.fd_owner[fd] = (child, role)
            self.sel.register(fd, selectors.EVENT_READ, "child")
        send(run_id, json.dumps({"t": "started", "pid": pid}).encode())

    def child_fds_to_close(self) -> list[int]:
        fds = [IN_FD, OUT_FD, self.wake_r]
        for fd in self.fd_owner:
            fds.append(fd)
        return fds

    # -- child pipes -----------------------------------------------------------------------------

    def read_child(self, fd: int) -> None:
        child, role = self.fd_owner[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            del self.fd_owner[fd]
            child.open_fds.discard(fd)
            self.maybe_finish(child)
            return
        if role == "frames":
            child.frame_buf += data
            buf = child.frame_buf
            while len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if len(buf) < 4 + n:
                    break
                send(child.run_id, buf[4:4 + n])
                buf = buf[4 + n:]
            child.frame_buf = buf
            return
        # Captured stdout/stderr, capped per run so a runaway print loop cannot flood the service.
        if child.output_truncated:
            return
        room = MAX_OUTPUT_BYTES - child.output_bytes
        if len(data) > room:
            data = data[:max(room, 0)]
            child.output_truncated = True
        child.output_bytes += len(data)
        if data:
            text = data.decode("utf-8", "replace")
            send(child.run_id, json.dumps({"t": "output", "stream": role, "data": text}).encode())
        if child.output_truncated:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except OSError:
                pass

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.get(pid)
            if child is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            child.status = (code, 0) if code >= 0 else (0, -code)
            # The run is over: whatever it forked goes with it, so its pipes close and nothing lingers.
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            self.maybe_finish(child)

    def maybe_finish(self, child: Child) -> None:
        if child.status is None or child.open_fds:
            return
        code, sig = child.status
        del self.children[child.pid]
        send(child.run_id, json.dumps({"t": "exit", "code": code, "signal": sig, "output_truncated": child.output_truncated}).encode())

    # -- main loop -------------------------------------------------------------------------------

    def read_control(self) -> bool:
        try:
            data = os.read(IN_FD, 1 << 20)
        except InterruptedError:
            return True
        if not data:
            return False
        self.in_buf += data
        buf = self.in_buf
        while len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) < 4 + n:
                break
            self.handle_control(json.loads(buf[4:4 + n]))
            buf = buf[4 + n:]
        self.in_buf = buf
        return True

    def serve(self) -> None:
        while True:
            try:
                events = self.sel.select()
            except InterruptedError:
                continue
            for key, _ in events:
                if key.data == "control":
                    if not self.read_control():
                        self.shutdown()
                        return
                elif key.data == "wake":
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                    self.reap()
                elif key.fd in self.fd_owner:
                    self.read_child(key.fd)
            self.reap()

    def shutdown(self) -> None:
        for pid in list(self.children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def main() -> None:
    # Preload what every run needs, so each fork starts with it in memory.
    import shaker.runtime  # noqa: F401
    os.set_blocking(IN_FD, True)
    try:
        Worker().serve()
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise


if __name__ == "__main__":
    main()
