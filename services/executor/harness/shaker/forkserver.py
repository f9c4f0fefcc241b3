"""The fork server: the one process that forks a worker's children.

A fork makes every page of the forking process shared with the child, so the forking process then
pays a page copy for every page it writes. The worker writes many (it relays every frame of every
run) and would pay them after each fork, and be busy in fork() itself while frames wait. So the
worker forks this process once, at start, with the harness loaded, and asks it for each child: it
writes little between forks, and its forks never hold up a frame.

Protocol. The worker writes requests to a pipe, as length-prefixed frames (a JSON head, a newline,
then bytes):
  {"t": "fork", "name", "rehearse"}       fork a child called name (its TMPDIR when unconfined)
  {"t": "code", "version_id"}\\n<marshal>  a compiled version, for every child forked after it
  {"t": "accessory", "version_id", "key"}\\n<JSON>   an accessory value, likewise
  {"t": "forget"}                         drop the code and accessories (the worker's cache is full)
This process answers on a SOCK_SEQPACKET socket, one message each:
  {"t": "forked", "name", "pid"} with the worker's ends of the child's four pipes (SCM_RIGHTS)
  {"t": "fork_failed", "name", "error"}
  {"t": "exited", "pid", "code", "signal", "memory_exceeded"}
Since requests are handled in order, a child has every version and accessory sent before its fork.
The end of the request pipe (the worker is gone) kills every child and ends this process.

Each child takes a slot, given back when it is reaped. Confined (sandbox.Confinement.enabled), a
child is cloned into namespaces of its own and its slot names a uid nobody else alive has (as root),
and it is reaped only once every process of its PID namespace is gone. Confined or not, the slot
has cgroups of its own (one per controller the Executor prepared: pids, memory, CPU weight), made
on its first use and kept for the next child of the slot (making and removing them per run cost
more than anything else a run's end does); the child is put into them before the worker hears of
it, and the run cannot write them. Unconfined, whatever is left in them at the reap is killed.
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
import time
from typing import Any

from shaker import runtime, sandbox
from shaker.frames import FrameReader, kill_group


class Cgroup:
    """One controller's directory for this server's runs (opened before the worker entered its
    sandbox, so it is reached by descriptor), and the limits each run's group there gets."""

    def __init__(self, fd: int, limits: dict[str, str]) -> None:
        self.fd = fd
        self.limits = limits

    def attach(self, name: str, pid: int) -> None:
        """Puts pid into the group called name, made (with its limits) on first use."""
        try:
            os.mkdir(name, 0o755, dir_fd=self.fd)
            for file, value in self.limits.items():
                _write_at(self.fd, f"{name}/{file}", value)
        except FileExistsError:
            pass
        _write_at(self.fd, f"{name}/cgroup.procs", str(pid))

    def oom_kills(self, name: str) -> int:
        """How many processes the kernel killed in the group for its memory limit, so far."""
        for file in ("memory.oom_control", "memory.events"):
            text = _read_at(self.fd, f"{name}/{file}")
            for line in (text or "").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def remove(self, names: list[str], within: float) -> None:
        """Removes these (emptied) groups: a group empties a moment after its last process is
        killed, so a busy one is tried again until `within` seconds have passed."""
        give_up = time.monotonic() + within
        while names:
            left = []
            for name in names:
                try:
                    os.rmdir(name, dir_fd=self.fd)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(name)
            names = left if time.monotonic() < give_up else []
            if names:
                time.sleep(0.01)

    def kill_all(self, name: str) -> None:
        """SIGKILLs whatever is still in the group (an unconfined run's leftovers)."""
        for pid in (_read_at(self.fd, f"{name}/cgroup.procs") or "").split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def _read_at(dir_fd: int, path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def _write_at(dir_fd: int, path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY, dir_fd=dir_fd)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class ForkServer:
    def __init__(self, requests_fd: int, sock: socket.socket, confinement: sandbox.Confinement,
                 cgroups: list[Cgroup]) -> None:
        self.requests_fd = requests_fd
        self.requests = FrameReader(requests_fd)
        self.sock = sock
        self.confinement = confinement
        self.cgroups = cgroups
        self.free_slots: list[int] = []  # slots given back; slots never used start at next_slot
        self.next_slot = 0
        self.slot_of: dict[int, int] = {}
        self.oom_seen: dict[int, int] = {}  # slot -> its memory group's OOM kills when last reaped
        self.code_cache: dict[str, Any] = {}
        self.accessories: dict[str, dict[str, Any]] = {}
        self.children: dict[int, str] = {}  # pid -> name
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r, self.wake_w = wake_r, wake_w
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def group_name(self, slot: int) -> str:
        """The cgroups of a slot: this fork server's own (the server's other workers have slots too)."""
        return f"{os.getpid()}-{slot}"

    def answer(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.send(data)

    def fork(self, name: str, rehearse: bool) -> None:
        conf = self.confinement
        if conf.enabled and not self.free_slots and self.next_slot >= conf.uid_stride:
            self.answer({"t": "fork_failed", "name": name, "error": "every run uid of this worker is in use"})
            return
        try:
            ctl_r, ctl_w = os.pipe()
            frames_r, frames_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
        except OSError as e:
            self.answer({"t": "fork_failed", "name": name, "error": str(e)})
            return
        if self.free_slots:
            slot = self.free_slots.pop()
        else:
            slot = self.next_slot
            self.next_slot += 1
        # Objects that exist now are never collected in the child: keeping them out of the collector
        # spares the child copying every page a collection would touch.
        gc.freeze()
        try:
            pid = sandbox.clone_run(conf) if conf.enabled else os.fork()
        except OSError as e:
            for fd in (ctl_r, ctl_w, frames_r, frames_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            self.free_slots.append(slot)
            self.answer({"t": "fork_failed", "name": name, "error": str(e)})
            return
        if pid == 0:
            try:
                confinement = (conf, sandbox.run_uid(conf, slot)) if conf.enabled else None
                runtime.spare_main(name, ctl_r, frames_w, out_w, err_w, self.code_cache, self.accessories, rehearse,
                                   confinement)
            finally:
                os._exit(70)
        for fd in (ctl_r, frames_w, out_w, err_w):
            os.close(fd)
        self.slot_of[pid] = slot
        try:
            os.setpgid(pid, pid)  # also done by the child; whichever runs first makes the group exist
        except OSError:
            pass
        self.children[pid] = name
        try:
            for group in self.cgroups:
                group.attach(self.group_name(slot), pid)
        except OSError as e:
            # A run that cannot be held by its limits does not run: its child dies unused.
            kill_group(pid)
            for fd in (ctl_w, frames_r, out_r, err_r):
                os.close(fd)
            self.answer({"t": "fork_failed", "name": name, "error": f"cannot put the run into its cgroup: {e}"})
            return
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
            name = self.children.pop(pid, None)
            slot = self.slot_of.pop(pid, None)
            oom = False
            if slot is not None:
                group_name = self.group_name(slot)
                if not self.confinement.enabled:
                    for group in self.cgroups:
                        group.kill_all(group_name)  # a confined run's processes died with its namespace
                    if name is not None:
                        runtime.remove_run_tmpdir(name)  # a confined run's /tmp went with its namespace too
                kills = sum(group.oom_kills(group_name) for group in self.cgroups)
                oom = kills > self.oom_seen.get(slot, 0)
                self.oom_seen[slot] = kills
                self.free_slots.append(slot)
            code = os.waitstatus_to_exitcode(status)
            self.answer({"t": "exited", "pid": pid, "code": max(code, 0), "signal": max(-code, 0),
                         "memory_exceeded": oom})

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
        for pid, name in self.children.items():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            if not self.confinement.enabled:
                runtime.remove_run_tmpdir(name)
        for group in self.cgroups:
            for slot in range(self.next_slot):
                group.kill_all(self.group_name(slot))
            group.remove([self.group_name(slot) for slot in range(self.next_slot)], within=1.0)


def start(keep: tuple[int, ...], confinement: sandbox.Confinement,
          cgroups: list[Cgroup]) -> tuple[int, int, socket.socket]:
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
            ForkServer(requests_r, theirs, confinement, cgroups).serve()
        except BaseException as e:  # noqa: BLE001 - whatever ends it, it must not return into the worker
            print(f"fork server: {e!r}", file=sys.stderr, flush=True)
        finally:
            os._exit(0)
    os.close(requests_r)
    theirs.close()
    return pid, requests_w, ours
