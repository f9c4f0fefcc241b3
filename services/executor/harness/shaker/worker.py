"""The long-lived Python worker: preloads the harness, then runs every run in a fresh forked child.

Protocol: PROTOCOL.md beside this package describes every frame on every pipe. In short: the
Executor writes frames to fd 3 and reads frames from fd 4, never stdout; every frame about a run is
`run id \n kind byte JSON`, and the kinds a run's own process may send (emit, log, result, error;
accessories the worker keeps) are the only ones relayed from it: started, exit and output come from
the worker's own knowledge, so nothing a run writes can end it early or name a process to kill.

Speed: a fork of this interpreter, and the child's generic set-up (process group, signals, closing
every inherited descriptor, stdout and stderr on pipes, its TMPDIR and cgroup), happen before a run
exists: the worker keeps a few idle "spare" children, each blocked reading its own pipe. A run is
handed to a spare as one message, so the run's critical path holds no fork. A spare has never run
anything, so every run still gets a process nobody else used. The children are forked by the fork
server (forkserver.py), a copy of this process made at start, so this one never forks: it neither
stops relaying frames during a fork nor pays a page copy for each page it writes after one. The run
is over as soon as the child's result (or error) frame arrives: the worker drains the child's stdout
and stderr (flushed before the result was sent), kills the child's process group, and reports the
exit at once; the fork server reaps the child later and says so.

Backpressure: when a run's consumer falls behind, the Executor sends "pause" and the worker stops
reading that child's frames pipe (it leaves the selector); the child blocks in ctx.emit once the pipe
is full, and the worker's other children keep flowing. "resume" reads on. A paused child that exits
keeps its frames in the pipe: the run is reported over only once they were all read after "resume".
"""
from __future__ import annotations

import collections
import errno
import json
import marshal
import os
import selectors
import socket
import struct
import sys
import time
from typing import Any

from shaker import forkserver, runtime, sandbox
from shaker.frames import (ACCESSORY, ERROR, EXIT, FROM_RUN, LOG, NEED_SOURCE, OUTPUT, RESULT, STARTED, FrameBuffer,
                           FrameReader, FrameTooLarge, kill_group, write_all, write_frame)

IN_FD = 3
OUT_FD = 4
MAX_OUTPUT_BYTES = int(os.environ.get("SHAKER_MAX_OUTPUT_BYTES", str(1024 * 1024)))
# The largest frame a run may send (an emitted value or its result, as JSON); a larger one ends the run.
MAX_FRAME_BYTES = int(os.environ.get("SHAKER_MAX_FRAME_BYTES", str(64 * 1024 * 1024)))
MAX_LOG_BYTES = 1024 * 1024
SPARES = int(os.environ.get("SHAKER_SPARES", "2"))
RECENT = 0.005
MAX_CACHED_VERSIONS = 256
MAX_CACHED_ACCESSORY_BYTES = 8 * 1024 * 1024


def send(run_id: str, kind: bytes, body: bytes) -> None:
    write_frame(OUT_FD, run_id.encode() + b"\n" + kind + body)


def send_json(run_id: str, kind: bytes, value: dict[str, Any]) -> None:
    send(run_id, kind, json.dumps(value, separators=(",", ":")).encode())


def send_error(run_id: str, kind: str, message: str) -> None:
    send_json(run_id, ERROR, {"type": kind, "message": message, "traceback": ""})


def fail_unstarted(run_id: str, kind: str, message: str) -> None:
    """Ends a run that never got a process: its error, then its exit."""
    send_error(run_id, kind, message)
    send_json(run_id, EXIT, {"code": 1, "signal": 0, "output_truncated": False})


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
        self.frames = FrameBuffer(MAX_FRAME_BYTES)
        self.open_fds = {frames_fd, out_fd, err_fd}
        self.output_bytes = 0
        self.output_truncated = False
        self.status: tuple[int, int] | None = None
        self.memory_exceeded = False
        self.reported = False  # the exit frame was sent
        self.paused = False  # its frames pipe is out of the selector (flow control)


class Worker:
    def __init__(self, confinement: sandbox.Confinement, cgroups: list[forkserver.Cgroup]) -> None:
        self.confinement = confinement
        # First, while this process holds nothing but the harness: everything the fork server
        # inherits, every child inherits.
        self.forker_pid, self.forker_fd, self.forker = forkserver.start((IN_FD, OUT_FD), confinement, cgroups)
        self.forker.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.code_cache: dict[str, Any] = {}
        self.marshalled: dict[str, bytes] = {}
        self.accessories: dict[str, dict[str, Any]] = {}  # version id -> key -> parsed JSON
        self.accessory_gen: dict[str, int] = {}  # version id -> how many times its accessories grew
        self.refill_after = 0.0
        self.forks = 0
        self.forking: dict[str, tuple[frozenset[str], dict[str, int], bool]] = {}  # asked of the fork server, by name
        self.waiting: collections.deque[tuple[str, str, bytes]] = collections.deque()  # runs with no child yet
        self.last_handoff = 0.0  # when the latest run was handed to a child
        self.unreported = 0  # runs handed to a child whose exit is not reported yet
        self.spares: list[Child] = []
        self.children: dict[int, Child] = {}  # by pid, spares included
        self.running: dict[str, Child] = {}  # by run id, until the child is finished
        self.fd_owner: dict[int, tuple[Child, str]] = {}
        self.control = FrameReader(IN_FD)
        self.sel.register(IN_FD, selectors.EVENT_READ, "control")
        self.sel.register(self.forker, selectors.EVENT_READ, "forker")

    # -- control frames ---------------------------------------------------------------------------

    def compile_source(self, version_id: str, source: str) -> Any:
        """Compiles a version once; a script that does not compile is remembered as its error. When
        the cache is full it is cleared: a later run of a forgotten version is answered "need
        source", and the Executor sends the run again with it."""
        code = self.code_cache.get(version_id)
        if code is None:
            try:
                code = compile(source, runtime.WORKFLOW_FILE, "exec")
            except (SyntaxError, ValueError) as e:
                code = e
            if len(self.code_cache) >= MAX_CACHED_VERSIONS:
                self.code_cache.clear()
                self.marshalled.clear()
                self.accessories.clear()
                self.accessory_gen.clear()
                self.ask_forker({"t": "forget"})
            self.code_cache[version_id] = code
            if not isinstance(code, BaseException):
                # Children forked from now on inherit it; older spares get these bytes with their run.
                # The source goes with the code: a run's traceback shows the workflow's lines from it.
                self.marshalled[version_id] = marshal.dumps((code, source))
                self.ask_forker({"t": "code", "version_id": version_id}, self.marshalled[version_id])
        return code

    def ask_forker(self, head: dict[str, Any], data: bytes = b"") -> None:
        write_frame(self.forker_fd, json.dumps(head).encode() + b"\n" + data)

    def handle_control(self, body: bytes) -> None:
        nl = body.find(b"\n")
        head = json.loads(body if nl < 0 else body[:nl])
        kind = head.get("t")
        if kind == "run":
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
        if code_or_error is None:
            if "source" not in head:
                send_json(run_id, NEED_SOURCE, {"version_id": version_id})
                return
            code_or_error = self.compile_source(version_id, head["source"])
        if isinstance(code_or_error, BaseException):
            fail_unstarted(run_id, type(code_or_error).__name__, str(code_or_error))
            return
        self.waiting.append((run_id, version_id, payload))
        self.dispatch()

    def dispatch(self) -> None:
        """Hands waiting runs to spares; for runs left waiting, asks for children at once (without a
        rehearsal, which would only delay them)."""
        while self.waiting and self.spares:
            self.hand_over(self.spares.pop(), *self.waiting.popleft())
        missing = len(self.waiting) - sum(1 for *_, rehearse in self.forking.values() if not rehearse)
        for _ in range(missing):
            self.fork(rehearse=False)

    def hand_over(self, child: Child, run_id: str, version_id: str, payload: bytes) -> None:
        child.run_id = run_id
        child.version_id = version_id
        self.running[run_id] = child
        code = b"" if version_id in child.versions else self.marshalled[version_id]
        accessories = b""
        if self.accessory_gen.get(version_id, 0) != child.accessory_gen.get(version_id, 0):
            accessories = json.dumps(self.accessories[version_id]).encode()
        vid = version_id.encode()
        message = struct.pack(">IIII", len(vid), len(payload), len(code), len(accessories)) + vid + payload + code + accessories
        self.last_handoff = time.monotonic()
        self.unreported += 1
        try:
            write_all(child.ctl_fd, message)
        except OSError:
            pass  # the spare died; its exit is reported when it is reaped
        # The child first, the Executor second: the Executor needs the pid only to kill the run, and
        # every frame of the child still follows it (they are read once this turn of the loop is over).
        send_json(run_id, STARTED, {"pid": child.pid})
        os.close(child.ctl_fd)
        child.ctl_fd = -1

    def fork(self, rehearse: bool) -> None:
        """Asks the fork server for a child; it arrives as a "forked" answer."""
        self.forks += 1
        name = f"{os.getpid()}-{self.forks}"
        self.forking[name] = (frozenset(self.code_cache), dict(self.accessory_gen), rehearse)
        self.ask_forker({"t": "fork", "name": name, "rehearse": rehearse})

    def read_forker(self) -> bool:
        """Handles what the fork server answered; False when it is gone."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.forker, 4096, 4)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                for fd in fds:
                    os.close(fd)
                return False
            answer = json.loads(data)
            kind = answer["t"]
            if kind == "forked":
                self.forked(answer["name"], answer["pid"], fds)
            elif kind == "fork_failed":
                self.fork_failed(answer["name"], answer["error"])
            elif kind == "exited":
                self.exited(answer["pid"], answer["code"], answer["signal"], bool(answer.get("memory_exceeded")))

    def forked(self, name: str, pid: int, fds: list[int]) -> None:
        versions, accessory_gen, _ = self.forking.pop(name)
        ctl_w, frames_r, out_r, err_r = fds
        child = Child(name, pid, ctl_w, frames_r, out_r, err_r, versions, accessory_gen)
        self.children[pid] = child
        for fd, role in ((frames_r, "frames"), (out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.fd_owner[fd] = (child, role)
            self.sel.register(fd, selectors.EVENT_READ, "child")
        if self.waiting:
            self.hand_over(child, *self.waiting.popleft())
        elif len(self.spares) >= SPARES:
            # Forked for a run another child took meanwhile, and no spare is missing: the end of its
            # run pipe makes it exit, so a burst leaves no more children behind than SPARES.
            os.close(child.ctl_fd)
            child.ctl_fd = -1
        else:
            self.spares.insert(0, child)

    def fork_failed(self, name: str, error: str) -> None:
        # Out of processes or memory: spares are tried again later; a run that waits for a child
        # and has none coming fails now, with the reason, rather than waiting for its timeout.
        self.forking.pop(name, None)
        print(f"cannot fork a child: {error}", file=sys.stderr, flush=True)
        self.refill_after = time.monotonic() + 1.0
        # Every child asked for goes to a waiting run first: runs beyond those still coming fail.
        while len(self.waiting) > len(self.forking):
            run_id, _, _ = self.waiting.popleft()
            fail_unstarted(run_id, "ResourceExhausted", f"no process could be started for the run: {error}")

    def exited(self, pid: int, code: int, sig: int, memory_exceeded: bool = False) -> None:
        child = self.children.get(pid)
        if child is None:
            return
        child.status = (code, sig)
        child.memory_exceeded = memory_exceeded
        # The run is over: whatever it forked goes with it, so its pipes close and nothing lingers.
        kill_group(pid)
        if child in self.spares:
            # A spare that dies unused is a sign of trouble (memory?): do not fork in a loop.
            self.spares.remove(child)
            self.refill_after = time.monotonic() + 1.0
        self.maybe_finish(child)

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
        """Relays what a run's process sent: its own data frames and nothing else. A frame of another
        kind, or over its size limit, ends the run as a protocol error."""
        try:
            bodies = child.frames.feed(data)
        except FrameTooLarge as e:
            self.end_run(child, "ProtocolError", f"the run sent {e}")
            return
        for body in bodies:
            kind = body[:1]
            if kind not in FROM_RUN:
                self.end_run(child, "ProtocolError", "the run wrote a frame the harness never sends on its frames pipe")
                return
            if kind == ACCESSORY:
                self.keep_accessory(child, body[1:])
                continue
            if kind == LOG and len(body) > MAX_LOG_BYTES:
                self.end_run(child, "ProtocolError", f"the run sent a log line of {len(body)} bytes, over {MAX_LOG_BYTES}")
                return
            if kind == RESULT or kind == ERROR:
                self.finish(child, body)
                return
            send(child.run_id, kind, body[1:])

    def finish(self, child: Child, body: bytes) -> None:
        """The run's last frame arrived: relay its output (flushed before the frame), kill its
        processes and clear its TMPDIR (so a run that starts next never finds its files), then tell
        the Executor."""
        for out_fd, role in ((child.out_fd, "stdout"), (child.err_fd, "stderr")):
            self.drain_output(child, out_fd, role)
        kill_group(child.pid)
        if not self.confinement.enabled:
            runtime.clear_run_tmpdir(child.name)
        send(child.run_id, body[:1], body[1:])
        self.report_exit(child, 0 if body[:1] == RESULT else 1, 0)

    def end_run(self, child: Child, kind: str, message: str) -> None:
        """Ends a run the worker will not hear more from (a protocol violation): its error, its kill."""
        kill_group(child.pid)
        send_error(child.run_id, kind, message)
        self.report_exit(child, 1, 9)

    def keep_accessory(self, child: Child, body: bytes) -> None:
        # A child fetched an accessory from the Registry: keep it for the child's version (never for a
        # version the frame names: a child speaks only for itself), so later children inherit it.
        if len(body) > MAX_CACHED_ACCESSORY_BYTES:
            return
        try:
            frame = json.loads(body)
            key = str(frame["key"])
            self.accessories.setdefault(child.version_id, {})[key] = frame["value"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        self.accessory_gen[child.version_id] = self.accessory_gen.get(child.version_id, 0) + 1
        self.ask_forker({"t": "accessory", "version_id": child.version_id, "key": key}, json.dumps(frame["value"]).encode())

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
            send_json(child.run_id, OUTPUT, {"stream": role, "data": data.decode("utf-8", "replace")})
        if child.output_truncated:
            kill_group(child.pid)

    def report_exit(self, child: Child, code: int, sig: int) -> None:
        if child.reported or not child.run_id:
            return
        child.reported = True
        self.unreported -= 1
        send_json(child.run_id, EXIT, {"code": code, "signal": sig, "output_truncated": child.output_truncated,
                                       "memory_exceeded": child.memory_exceeded})

    def maybe_finish(self, child: Child) -> None:
        if child.status is None or child.open_fds:
            return
        del self.children[child.pid]
        if self.running.get(child.run_id) is child:
            del self.running[child.run_id]
        if child.ctl_fd >= 0:
            os.close(child.ctl_fd)
            child.ctl_fd = -1
        self.report_exit(child, *child.status)

    # -- main loop -------------------------------------------------------------------------------

    def read_control(self) -> bool:
        bodies = self.control.read()
        for body in bodies or ():
            self.handle_control(body)
        return bodies is not None

    def refill_timeout(self) -> float | None:
        """How long the loop may wait for frames before it forks a spare (0: fork now if nothing
        waits; None: no spare is due). Spares are forked only when nothing else waits, so a fork
        never delays a frame; and while a run just handed over may answer any moment, the fork waits
        for its answer, or for RECENT seconds, unless no spare is left for the next run."""
        if len(self.spares) + sum(1 for *_, rehearse in self.forking.values() if rehearse) >= SPARES:
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
            try:
                events = self.sel.select(timeout)
            except InterruptedError:
                continue
            if not events and timeout == 0:
                self.fork(rehearse=True)
                continue
            # A new run first: the other events are the ends of earlier runs (pipes closing, exits).
            if len(events) > 1:
                events.sort(key=lambda event: event[0].data != "control")
            for key, _ in events:
                if key.data == "control":
                    if not self.read_control():
                        self.shutdown()
                        return
                elif key.data == "forker":
                    if not self.read_forker():
                        print("the fork server died", file=sys.stderr, flush=True)
                        self.shutdown()
                        sys.exit(1)
                elif key.fd in self.fd_owner:
                    self.read_child(key.fd)

    def shutdown(self) -> None:
        """Ends every child; the fork server, told by the end of its request pipe, reaps them and
        removes what they had (TMPDIRs, cgroups) before the worker exits."""
        for pid in list(self.children):
            kill_group(pid)
        os.close(self.forker_fd)
        try:
            os.waitpid(self.forker_pid, 0)
        except ChildProcessError:
            pass


def open_cgroups() -> list[forkserver.Cgroup]:
    """The controllers' directories the Executor prepared for this server's runs (SHAKER_CGROUPS:
    a JSON list of {"dir", "limits"}), opened now: a confined worker cannot see them later."""
    groups = []
    for entry in json.loads(os.environ.get("SHAKER_CGROUPS") or "[]"):
        fd = os.open(entry["dir"], os.O_RDONLY | os.O_DIRECTORY)
        groups.append(forkserver.Cgroup(fd, {k: str(v) for k, v in entry.get("limits", {}).items()}))
    return groups


def main() -> None:
    confinement = sandbox.Confinement.from_env()
    cgroups = open_cgroups()
    if confinement.enabled:
        sandbox.enter_worker(confinement)
    else:
        runtime.run_tmpdir("")  # settles tempfile's directory once, for every child
        runtime.remove_stale_tmpdirs()
    os.set_blocking(IN_FD, True)
    try:
        Worker(confinement, cgroups).serve()
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise


if __name__ == "__main__":
    main()
