"""The fork server: the one process that forks a worker's children.

A fork makes every page of the forking process shared with the child, so the forking process then
pays a page copy for every page it writes. The worker writes many (it relays every frame of every
run) and would pay them after each fork, and be busy in fork() itself while frames wait. So the
worker forks this process once, at start, with the harness loaded, and asks it for each child: it
writes little between forks, and its forks never hold up a frame.

Protocol. The worker writes requests to a pipe, as length-prefixed frames (a JSON head, a newline,
then bytes):
  {"t": "fork", "name", "rehearse"}       fork a child called name (its TMPDIR and cgroup)
  {"t": "code", "version_id"}\\n<marshal>  a compiled version, for every child forked after it
  {"t": "accessory", "version_id", "key"}\\n<JSON>   an accessory value, likewise
  {"t": "forget"}                         drop the code and accessories (the worker's cache is full)
This process answers on a SOCK_SEQPACKET socket, one message each:
  {"t": "forked", "name", "pid"} with the worker's ends of the child's four pipes (SCM_RIGHTS)
  {"t": "fork_failed", "name", "error"}
  {"t": "exited", "pid", "code", "signal"}
Since requests are handled in order, a child has every version and accessory sent before its fork.
The end of the request pipe (the worker is gone) kills every child and ends this process.
"""
from __future__ import annotations

import gc
import json
import marshal
import os
import selectors
import signal
import socket
import sys
from typing import Any

from shaker import runtime
from shaker.frames import FrameReader, kill_group

class ForkServer:
    def __init__(self, requests_fd: int, sock: socket.socket) -> None:
        self.requests_fd = requests_fd
        self.requests = FrameReader(requests_fd)
        self.sock = sock
        self.code_cache: dict[str, Any] = {}
        self.accessories: dict[str, dict[str, Any]] = {}
        self.children: dict[int, str] = {}  # pid -> name
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r, self.wake_w = wake_r, wake_w
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def answer(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.send(data)

    def fork(self, name: str, rehearse: bool) -> None:
        try:
            ctl_r, ctl_w = os.pipe()
            frames_r, frames_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
        except OSError as e:
            self.answer({"t": "fork_failed", "name": name, "error": str(e)})
            return
        # Objects that exist now are never collected in the child: keeping them out of the collector
        # spares the child copying every page a collection would touch.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as e:
            for fd in (ctl_r, ctl_w, frames_r, frames_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            self.answer({"t": "fork_failed", "name": name, "error": str(e)})
            return
        if pid == 0:
            try:
                runtime.spare_main(name, ctl_r, frames_w, out_w, err_w, self.code_cache, self.accessories, rehearse)
            finally:
                os._exit(70)
        for fd in (ctl_r, frames_w, out_w, err_w):
            os.close(fd)
        try:
            os.setpgid(pid, pid)  # also done by the child; whichever runs first makes the group exist
        except OSError:
            pass
        self.children[pid] = name
        ends = [ctl_w, frames_r, out_r, err_r]
        try:
            self.answer({"t": "forked", "name": name, "pid": pid}, ends)
        finally:
            for fd in ends:
                os.close(fd)

    def handle(self, body: bytes) -> None:
        nl = body.find(b"\n")
        head = json.loads(body if nl < 0 else body[:nl])
        rest = body[nl + 1:] if nl >= 0 else b""
        kind = head.get("t")
        if kind == "fork":
            self.fork(head["name"], bool(head.get("rehearse")))
        elif kind == "code":
            self.code_cache[head["version_id"]] = marshal.loads(rest)
        elif kind == "accessory":
            self.accessories.setdefault(head["version_id"], {})[head["key"]] = json.loads(rest)
        elif kind == "forget":
            self.code_cache.clear()
            self.accessories.clear()

    def read_requests(self) -> bool:
        bodies = self.requests.read()
        for body in bodies or ():
            self.handle(body)
        return bodies is not None

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            self.answer({"t": "exited", "pid": pid, "code": max(code, 0), "signal": max(-code, 0)})

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.requests_fd, selectors.EVENT_READ, "requests")
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        while True:
            for key, _ in sel.select():
                if key.data == "requests":
                    if not self.read_requests():
                        self.shutdown()
                        return
                else:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
            self.reap()

    def shutdown(self) -> None:
        """The worker is gone: so are its children and what they had (the worker, gone, may not have
        removed their TMPDIRs and cgroups; if it did, there is nothing left to remove)."""
        for pid in self.children:
            kill_group(pid)
        leftovers = runtime.Leftovers()
        for pid, name in self.children.items():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            leftovers.remove(name, within=1.0)
        leftovers.drain()


def start(keep: tuple[int, ...]) -> tuple[int, int, socket.socket]:
    """Forks the fork server from the worker. Returns its pid, the pipe to write requests to, and the
    socket its answers arrive on. In the server, every descriptor but `keep` (the worker's own, which
    it may not touch) is left as it was; `keep` are pointed at /dev/null, so a pipe made later never
    takes their numbers (a child's set-up moves its pipes onto fixed low numbers)."""
    requests_r, requests_w = os.pipe()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(requests_w)
            ours.close()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in keep:
                os.dup2(devnull, fd)
            os.close(devnull)
            ForkServer(requests_r, theirs).serve()
        except BaseException as e:  # noqa: BLE001 - whatever ends it, it must not return into the worker
            print(f"fork server: {e!r}", file=sys.stderr, flush=True)
        finally:
            os._exit(0)
    os.close(requests_r)
    theirs.close()
    return pid, requests_w, ours
