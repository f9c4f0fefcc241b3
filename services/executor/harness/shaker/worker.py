"""The long-lived Python worker: preloads the harness, then runs every run in a fresh forked child.

Protocol (never on stdout): the Executor writes frames to fd 3 and reads frames from fd 4. A frame
is a 4-byte big-endian length and a body. Frames the worker sends are prefixed with the run id and a
newline, so the Executor can route them without the worker re-encoding child frames.

  Executor -> worker: {"t": "run", "id", "version_id", "source"?}\\n<payload JSON>
                      {"t": "source", "version_id", "source"}   (cache only)
                      {"t": "pause"|"resume", "id"}   (flow control of one run)
  worker -> Executor: id\\n{"t": "started", "pid"}
                      id\\n<a child frame: emit, log, http, accessory, result, error>
                      id\\n{"t": "output", "stream": "stdout"|"stderr", "data"}
                      id\\n{"t": "exit", "code", "signal", "output_truncated"}

Speed: a fork of this interpreter, and the child's generic set-up (process group, signals, closing
every inherited descriptor, stdout and stderr on pipes), happen before a run exists: the worker keeps
a few idle "spare" children forked ahead, each blocked reading its own pipe. A run is handed to a
spare as one message, so the run's critical path holds no fork. A spare has never run anything, so
every run still gets a process nobody else used. The run is over as soon as the child's result (or
error) frame arrives: the worker drains the child's stdout and stderr (flushed before the result was
sent), reports the exit at once, and kills the child's process group, which it reaps later.

Backpressure: when a run's consumer falls behind, the Executor sends "pause" and the worker stops
reading that child's frames pipe (it leaves the selector); the child blocks in ctx.emit once the pipe
is full, and the worker's other children keep flowing. "resume" reads on. A paused child that exits
keeps its frames in the pipe: the run is reported over only once they were all read after "resume".
"""
from __future__ import annotations

import errno
import gc
import json
import marshal
import os
import selectors
import signal
import struct
import sys
import time
from typing import Any

from shaker import runtime

IN_FD = 3
OUT_FD = 4
MAX_OUTPUT_BYTES = int(os.environ.get("SHAKER_MAX_OUTPUT_BYTES", str(1024 * 1024)))
SPARES = int(os.environ.get("SHAKER_SPARES", "2"))
RECENT = 0.005
GROUP_REMOVAL_SECONDS = 5.0
GROUP_RETRY_SECONDS = 0.1
MAX_CACHED_VERSIONS = 256
MAX_CACHED_ACCESSORY_BYTES = 8 * 1024 * 1024

_RESULT = b'{"t":"result"'
_ERROR = b'{"t":"error"'
_ACCESSORY = b'{"t":"accessory"'


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


def send_json(run_id: str, value: dict[str, Any]) -> None:
    send(run_id, json.dumps(value, separators=(",", ":")).encode())


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


class Child:
    """A forked child as the worker sees it: a spare until it is given a run, then that run's process."""

    def __init__(self, name: str, pid: int, ctl_fd: int, frames_fd: int, out_fd: int, err_fd: int,
                 versions: frozenset[str], accessory_gen: dict[str, int]) -> None:
        self.name = name  # names its TMPDIR and pids cgroup
        self.pid = pid
        self.run_id = ""
        self.version_id = ""
        self.accessory_gen = accessory_gen  # the cached accessories it inherited, by version
        self.ctl_fd = ctl_fd
        self.frames_fd = frames_fd
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.versions = versions  # the compiled versions it inherited
        self.frame_buf = b""
        self.open_fds = {frames_fd, out_fd, err_fd}
        self.output_bytes = 0
        self.output_truncated = False
        self.status: tuple[int, int] | None = None
        self.reported = False  # the exit frame was sent
        self.paused = False  # its frames pipe is out of the selector (flow control)


class Worker:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.code_cache: dict[str, Any] = {}
        self.marshalled: dict[str, bytes] = {}
        self.accessories: dict[str, dict[str, Any]] = {}  # version id -> key -> parsed JSON
        self.accessory_gen: dict[str, int] = {}  # version id -> how many times its accessories grew
        self.refill_after = 0.0
        self.forks = 0
        self.busy_groups: list[tuple[str, float]] = []  # cgroups still emptying: (path, give up at)
        self.last_handoff = 0.0  # when the latest run was handed to a child
        self.unreported = 0  # runs handed to a child whose exit is not reported yet
        self.spares: list[Child] = []
        self.children: dict[int, Child] = {}  # by pid, spares included
        self.running: dict[str, Child] = {}  # by run id, until the child is finished
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
        """Compiles a version once; a script that does not compile is remembered as its error, since
        the Executor sends each version's source to a worker only once."""
        code = self.code_cache.get(version_id)
        if code is None:
            try:
                code = compile(source, "workflow.py", "exec")
            except (SyntaxError, ValueError) as e:
                code = e
            # The Executor clears its list of versions sent at the same size, so both forget together.
            if len(self.code_cache) >= MAX_CACHED_VERSIONS:
                self.code_cache.clear()
                self.marshalled.clear()
                self.accessories.clear()
                self.accessory_gen.clear()
            self.code_cache[version_id] = code
        return code

    def handle_control(self, body: bytes) -> None:
        nl = body.find(b"\n")
        head = json.loads(body if nl < 0 else body[:nl])
        kind = head.get("t")
        if kind == "source":
            self.compile_source(head["version_id"], head["source"])
        elif kind == "run":
            self.start_run(head, body[nl + 1:] if nl >= 0 else b"{}")
        elif kind == "pause" or kind == "resume":
            child = self.running.get(head.get("id", ""))
            if child is not None:
                self.set_paused(child, kind == "pause")

    def set_paused(self, child: Child, paused: bool) -> None:
        if child.paused == paused:
            return
        child.paused = paused
        if child.frames_fd not in child.open_fds:
            return  # the frames were all read: nothing left to hold back
        if paused:
            self.sel.unregister(child.frames_fd)
        else:
            self.sel.register(child.frames_fd, selectors.EVENT_READ, "child")

    def start_run(self, head: dict[str, Any], payload: bytes) -> None:
        run_id = head["id"]
        version_id = head["version_id"]
        code_or_error = self.code_cache.get(version_id)
        if code_or_error is None and "source" in head:
            code_or_error = self.compile_source(version_id, head["source"])
        if code_or_error is None or isinstance(code_or_error, BaseException):
            e = code_or_error or RuntimeError("the worker has no source for version " + version_id)
            send_json(run_id, {"t": "error", "type": type(e).__name__, "message": str(e), "traceback": ""})
            send_json(run_id, {"t": "exit", "code": 1, "signal": 0, "output_truncated": False})
            return
        child = self.spares.pop() if self.spares else self.fork_spare(rehearse=False)
        child.run_id = run_id
        child.version_id = version_id
        self.running[run_id] = child
        code = b""
        if version_id not in child.versions:
            code = self.marshalled.get(version_id) or b""
            if not code:
                code = self.marshalled[version_id] = marshal.dumps(self.code_cache[version_id])
        accessories = b""
        if self.accessory_gen.get(version_id, 0) != child.accessory_gen.get(version_id, 0):
            accessories = json.dumps(self.accessories[version_id]).encode()
        vid = version_id.encode()
        message = struct.pack(">IIII", len(vid), len(payload), len(code), len(accessories)) + vid + payload + code + accessories
        send_json(run_id, {"t": "started", "pid": child.pid})
        self.last_handoff = time.monotonic()
        self.unreported += 1
        try:
            write_all(child.ctl_fd, message)
        except OSError:
            pass  # the spare died; its exit is reported when it is reaped
        os.close(child.ctl_fd)
        child.ctl_fd = -1

    def fork_spare(self, rehearse: bool = True) -> Child:
        self.forks += 1
        name = f"{os.getpid()}-{self.forks}"
        ctl_r, ctl_w = os.pipe()
        frames_r, frames_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # Objects that exist now are never collected in the child: keeping them out of the collector
        # spares the child copying every page a collection would touch.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            try:
                self.forget()
                runtime.spare_main(name, ctl_r, frames_w, out_w, err_w, self.code_cache, self.accessories, rehearse)
            finally:
                os._exit(70)
        for fd in (ctl_r, frames_w, out_w, err_w):
            os.close(fd)
        try:
            os.setpgid(pid, pid)  # also done by the child; whichever runs first makes the group exist
        except OSError:
            pass
        child = Child(name, pid, ctl_w, frames_r, out_r, err_r, frozenset(self.code_cache), dict(self.accessory_gen))
        self.children[pid] = child
        for fd, role in ((frames_r, "frames"), (out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.fd_owner[fd] = (child, role)
            self.sel.register(fd, selectors.EVENT_READ, "child")
        return child

    def forget(self) -> None:
        """In a new child: drops the worker's own state, which is no business of a run."""
        self.marshalled.clear()
        self.children.clear()
        self.spares.clear()
        self.fd_owner.clear()
        self.in_buf = b""
        self.sel = None  # type: ignore[assignment]

    def refill(self) -> None:
        try:
            self.spares.insert(0, self.fork_spare())
        except OSError as e:  # out of processes or memory: try again later, runs fork on demand
            print(f"cannot fork a spare child: {e}", file=sys.stderr, flush=True)
            self.refill_after = time.monotonic() + 1.0

    # -- child pipes -----------------------------------------------------------------------------

    def close_fd(self, child: Child, fd: int) -> None:
        if not (child.paused and fd == child.frames_fd):
            self.sel.unregister(fd)
        os.close(fd)
        del self.fd_owner[fd]
        child.open_fds.discard(fd)

    def read_chunk(self, child: Child, fd: int) -> bytes | None:
        """Reads what a child's pipe holds: None when nothing is there yet, b"" (the pipe now closed)
        at its end or on an error."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.close_fd(child, fd)
        return data

    def read_child(self, fd: int) -> None:
        child, role = self.fd_owner[fd]
        data = self.read_chunk(child, fd)
        if data is None:
            return
        if not data:
            self.maybe_finish(child)
            return
        if not child.run_id or child.reported:
            return  # a spare has nothing to say; a finished run's leftovers are dropped
        if role == "frames":
            self.read_frames(child, data)
        else:
            self.relay_output(child, role, data)

    def read_frames(self, child: Child, data: bytes) -> None:
        buf = child.frame_buf + data if child.frame_buf else data
        offset = 0
        while len(buf) - offset >= 4:
            (n,) = struct.unpack_from(">I", buf, offset)
            if len(buf) - offset - 4 < n:
                break
            body = buf[offset + 4:offset + 4 + n]
            offset += 4 + n
            if body.startswith(_ACCESSORY):
                self.keep_accessory(child, body)
                continue
            if body.startswith(_RESULT) or body.startswith(_ERROR):
                # The child flushed stdout and stderr before this frame: relay all of it first.
                for out_fd, role in ((child.out_fd, "stdout"), (child.err_fd, "stderr")):
                    self.drain_output(child, out_fd, role)
                # The run is over before its caller hears so: its processes are killed and its
                # TMPDIR removed first, so a run that starts next never finds this one's files.
                kill_group(child.pid)
                runtime.clear_run_tmpdir(child.name)
                send(child.run_id, body)
                self.report_exit(child, 0 if body.startswith(_RESULT) else 1, 0)
                child.frame_buf = b""
                return
            send(child.run_id, body)
        child.frame_buf = buf[offset:]

    def keep_accessory(self, child: Child, body: bytes) -> None:
        # A child fetched an accessory from the Registry: keep it for the child's version (never for a
        # version the frame names: a child speaks only for itself), so later children inherit it.
        if len(body) > MAX_CACHED_ACCESSORY_BYTES:
            return
        try:
            frame = json.loads(body)
            self.accessories.setdefault(child.version_id, {})[str(frame["key"])] = frame["value"]
        except (ValueError, KeyError, TypeError):
            return
        self.accessory_gen[child.version_id] = self.accessory_gen.get(child.version_id, 0) + 1

    def drain_output(self, child: Child, fd: int, role: str) -> None:
        while fd in child.open_fds:
            data = self.read_chunk(child, fd)
            if not data:
                return
            self.relay_output(child, role, data)

    def relay_output(self, child: Child, role: str, data: bytes) -> None:
        # Captured stdout/stderr, capped per run so a runaway print loop cannot flood the service.
        if child.output_truncated:
            return
        room = MAX_OUTPUT_BYTES - child.output_bytes
        if len(data) > room:
            data = data[:max(room, 0)]
            child.output_truncated = True
        child.output_bytes += len(data)
        if data:
            send_json(child.run_id, {"t": "output", "stream": role, "data": data.decode("utf-8", "replace")})
        if child.output_truncated:
            kill_group(child.pid)

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
            kill_group(pid)
            if child in self.spares:
                # A spare that dies unused is a sign of trouble (memory?): do not fork in a loop.
                self.spares.remove(child)
                self.refill_after = time.monotonic() + 1.0
            self.maybe_finish(child)

    def remove_groups(self) -> None:
        """Removes the cgroups of children that are gone; a group empties a moment after its last
        process is killed, so one still busy is tried again on later turns of the loop."""
        now = time.monotonic()
        still = []
        for group, give_up in self.busy_groups:
            try:
                os.rmdir(group)
            except FileNotFoundError:
                pass
            except OSError:
                if now < give_up:
                    still.append((group, give_up))
        self.busy_groups = still

    def report_exit(self, child: Child, code: int, sig: int) -> None:
        if child.reported or not child.run_id:
            return
        child.reported = True
        self.unreported -= 1
        send_json(child.run_id, {"t": "exit", "code": code, "signal": sig, "output_truncated": child.output_truncated})

    def maybe_finish(self, child: Child) -> None:
        if child.status is None or child.open_fds:
            return
        del self.children[child.pid]
        if self.running.get(child.run_id) is child:
            del self.running[child.run_id]
        runtime.remove_run_tmpdir(child.name)
        group = runtime.child_group(child.name)
        if group:
            self.busy_groups.append((group, time.monotonic() + GROUP_REMOVAL_SECONDS))
            self.remove_groups()
        if child.ctl_fd >= 0:
            os.close(child.ctl_fd)
            child.ctl_fd = -1
        self.report_exit(child, *child.status)

    # -- main loop -------------------------------------------------------------------------------

    def read_control(self) -> bool:
        try:
            data = os.read(IN_FD, 1 << 20)
        except InterruptedError:
            return True
        if not data:
            return False
        buf = self.in_buf + data if self.in_buf else data
        offset = 0
        while len(buf) - offset >= 4:
            (n,) = struct.unpack_from(">I", buf, offset)
            if len(buf) - offset - 4 < n:
                break
            self.handle_control(buf[offset + 4:offset + 4 + n])
            offset += 4 + n
        self.in_buf = buf[offset:]
        return True

    def refill_timeout(self) -> float | None:
        """How long the loop may wait for frames before it forks a spare (0: fork now if nothing
        waits; None: no spare is due). Spares are forked only when nothing else waits, so a fork
        never delays a frame; and while a run just handed over may answer any moment, the fork waits
        for its answer, or for RECENT seconds, unless no spare is left for the next run."""
        if len(self.spares) >= SPARES:
            return None
        now = time.monotonic()
        if now < self.refill_after:
            return self.refill_after - now
        if self.spares and self.unreported:
            quiet = self.last_handoff + RECENT - now
            if quiet > 0:
                return quiet
        return 0

    def serve(self) -> None:
        while True:
            timeout = self.refill_timeout()
            if self.busy_groups:
                timeout = GROUP_RETRY_SECONDS if timeout is None else min(timeout, GROUP_RETRY_SECONDS)
            try:
                events = self.sel.select(timeout)
            except InterruptedError:
                continue
            if not events and timeout == 0:
                self.refill()
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
            if self.busy_groups:
                self.remove_groups()

    def shutdown(self) -> None:
        """Ends every child and removes what they had (TMPDIRs, cgroups) before the worker exits."""
        for pid in list(self.children):
            kill_group(pid)
        for child in list(self.children.values()):
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
            runtime.remove_run_tmpdir(child.name)
            group = runtime.child_group(child.name)
            if group:
                self.busy_groups.append((group, time.monotonic() + 1.0))
        while self.busy_groups:
            self.remove_groups()
            if self.busy_groups:
                time.sleep(GROUP_RETRY_SECONDS / 10)


def main() -> None:
    runtime.run_tmpdir("")  # settles tempfile's directory once, for every child
    os.set_blocking(IN_FD, True)
    try:
        Worker().serve()
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise


if __name__ == "__main__":
    main()
