"""What a forked child does: set up its process, wait for its run, build ctx, run execute(ctx), exit."""
from __future__ import annotations

import json
import linecache
import marshal
import os
import resource
import shutil
import signal
import struct
import sys
import sysconfig
import tempfile
import time
import traceback
import types
from typing import Any

from . import sandbox
from .context import Channel, WorkflowContext
from .frames import ERROR, RESULT
from .rpc import RpcClient

# The child's descriptors: 0 /dev/null, 1 and 2 the output pipes, then these two, nothing else.
CTL_FD = 3
FRAMES_FD = 4
# How long a finished child waits for the worker to kill it before it exits by itself.
END_GRACE_SECONDS = 10.0
# The name a workflow's script is compiled under: its frames in a traceback say `File "workflow.py"`.
WORKFLOW_FILE = "workflow.py"
# The harness's own directory (this package and its neighbours): its frames are left out of tracebacks.
_HARNESS_DIRS = tuple({os.path.join(d, "") for d in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                    os.path.dirname(os.path.dirname(os.path.realpath(__file__))))})
# The standard library's directories: its frames keep their paths, as a plain traceback shows them.
_STDLIB_DIRS = tuple({os.path.join(os.path.abspath(p), "") for name in ("stdlib", "platstdlib")
                      if (p := sysconfig.get_paths().get(name))})
_LIBRARY_MARKERS = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)


def register_source(source: str) -> None:
    """Lets linecache (so tracebacks, warnings and inspect) show the lines of the workflow's script,
    which was compiled from a string and has no file. An entry without an mtime is never checked
    against a file, so it stays until the run ends."""
    linecache.cache[WORKFLOW_FILE] = (len(source), None, source.splitlines(True), WORKFLOW_FILE)


def _shown_path(filename: str) -> str | None:
    """How a frame's file appears in a run's traceback: None for the harness's own frames; a
    library's path from its package down (no server directory); the workflow's, the standard
    library's and anything else as they are."""
    if filename == WORKFLOW_FILE or filename.startswith("<"):
        return filename
    path = os.path.abspath(filename)
    if path.startswith(_HARNESS_DIRS):
        return None
    for marker in _LIBRARY_MARKERS:
        at = path.rfind(marker)
        if at >= 0:
            return path[at + len(marker):]
    if path.startswith(_STDLIB_DIRS):
        return filename
    # Elsewhere on the import path (PYTHONPATH, a venv): shown from that entry down.
    best = ""
    for entry in sys.path:
        if entry and os.path.isabs(entry):
            root = os.path.join(os.path.abspath(entry), "")
            if path.startswith(root) and len(root) > len(best) and not root.startswith(_HARNESS_DIRS):
                best = root
    return path[len(best):] if best else filename


def _prune(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    kept = []
    for frame in te.stack:
        shown = _shown_path(frame.filename)
        if shown is None:
            continue
        frame.filename = shown  # its source line was read already, under its real name
        kept.append(frame)
    te.stack = traceback.StackSummary.from_list(kept)
    for other in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if other is not None:
            _prune(other, seen)


def format_traceback(error: BaseException, source: str | None = None) -> str:
    """The traceback of a run's error as its caller sees it: the workflow's frames with their source
    lines, and the frames of what it called, without the harness's frames or server paths."""
    if source is not None:
        register_source(source)  # again: the workflow may have cleared linecache
    te = traceback.TracebackException(type(error), error, error.__traceback__)
    _prune(te, set())
    return "".join(te.format())


def _limit(kind: int, value: int | None) -> None:
    if not value:
        return
    try:
        soft, hard = resource.getrlimit(kind)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (cap, cap))
    except (ValueError, OSError):
        pass


def _setup_process(ctl_fd: int, frames_fd: int, out_fd: int, err_fd: int) -> None:
    """Makes this fresh fork a process of its own: its group, default signals, and only its own pipes."""
    os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.dup2(ctl_fd, CTL_FD)
    os.dup2(frames_fd, FRAMES_FD)
    # Everything else the worker had open (its own pipes, other runs' pipes, other spares' pipes)
    # is closed, so a run can neither read nor write anybody else's.
    os.closerange(FRAMES_FD + 1, max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], devnull + 1))
    try:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except AttributeError:
        pass


def _read_exactly(fd: int, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the worker closed the run pipe")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _apply_limits(payload: dict[str, Any]) -> None:
    limits = payload.get("limits") or {}
    _limit(resource.RLIMIT_AS, limits.get("memory_bytes"))
    _limit(resource.RLIMIT_CPU, limits.get("cpu_seconds"))
    _limit(resource.RLIMIT_NOFILE, limits.get("open_files"))
    _limit(resource.RLIMIT_FSIZE, limits.get("file_bytes"))


def _prepare_space(name: str, confinement: tuple[sandbox.Confinement, int] | None) -> None:
    """Gives this child what is its own before it has a run, so a run waits for none of it. Confined:
    its namespaces' /proc and /tmp, its own principal and filters (sandbox.confine_run); unconfined
    (SHAKER_SANDBOX=none), a private TMPDIR on the host's. Its cgroups are the fork server's doing."""
    if confinement is not None:
        sandbox.confine_run(*confinement)
        tmp = "/tmp"
        os.environ["HOME"] = tmp  # the server's home is not in a confined run's root; its /tmp is writable
    else:
        tmp = run_tmpdir(name)
        os.mkdir(tmp, 0o700)
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp


_REHEARSAL = compile("def execute(ctx):\n    return {'ok': True, 'input': ctx.input}\n", "rehearsal.py", "exec")


def _rehearse() -> None:
    """Does what every run does, without a run, while nobody waits: after a fork, the first write to
    each inherited page copies it, and a rehearsal makes most of those copies happen here."""
    payload = json.loads('{"input": {"n": 1}, "messages": [], "secrets": {}, "metadata": {}, "env": {}, "params": {},'
                         ' "session_id": "s", "run_id": "r", "rpc_url": "http://127.0.0.1:1", "token": "t", "limits": {}}')
    os.environ.update(payload["env"])
    ctx = WorkflowContext(payload, Channel(-1), RpcClient(payload["rpc_url"], payload["token"]), {})
    module = types.ModuleType("rehearsal")
    exec(_REHEARSAL, module.__dict__)
    json.dumps(module.__dict__["execute"](ctx))
    json.dumps(ctx._usage.as_dict())


def spare_main(name: str, ctl_fd: int, frames_fd: int, out_fd: int, err_fd: int, code_cache: dict[str, Any],
               accessories: dict[str, dict[str, Any]], rehearse: bool = True,
               confinement: tuple[sandbox.Confinement, int] | None = None) -> None:
    """Runs in a freshly forked spare child: gets ready, waits for one run, runs it, exits. Never returns.
    A child forked for a run that is already waiting skips the rehearsal, which would only delay it.
    `confinement` is the description and uid of a confined child (sandbox.clone_run made it)."""
    _setup_process(ctl_fd, frames_fd, out_fd, err_fd)
    unconfined: OSError | None = None
    try:
        _prepare_space(name, confinement)
    except OSError as e:
        unconfined = e  # reported as the run's error: no run goes without its limits
    if rehearse and unconfined is None:
        _rehearse()
    try:
        head = _read_exactly(CTL_FD, 16)
    except (EOFError, OSError):
        os._exit(0)  # the worker went away before giving this spare a run
    vid_len, payload_len, code_len, acc_len = struct.unpack(">IIII", head)
    version_id = _read_exactly(CTL_FD, vid_len).decode()
    payload = json.loads(_read_exactly(CTL_FD, payload_len))
    code = marshal.loads(_read_exactly(CTL_FD, code_len)) if code_len else code_cache[version_id]
    cached = json.loads(_read_exactly(CTL_FD, acc_len)) if acc_len else accessories.get(version_id) or {}
    os.close(CTL_FD)
    code_cache.clear()  # other versions' code is none of this run's business
    accessories.clear()
    run(code, payload, cached, unconfined)


def run_tmpdir(name: str) -> str:
    """The private temporary directory (TMPDIR and tempfile's default) of the child called name; the
    worker removes it."""
    return os.path.join(tempfile.gettempdir(), "shaker-" + name)


def clear_run_tmpdir(name: str) -> None:
    """Removes what a run left in its temporary directory, if anything (most runs leave nothing: an
    empty directory, which shows a later run nothing, waits for remove_run_tmpdir off the hot path)."""
    path = run_tmpdir(name)
    try:
        left = os.listdir(path)
    except OSError:
        return
    if left:
        shutil.rmtree(path, ignore_errors=True)


def remove_run_tmpdir(name: str) -> None:
    """Removes a child's temporary directory and what its run left in it (most runs leave nothing)."""
    path = run_tmpdir(name)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_tmpdirs() -> None:
    """Removes the TMPDIRs of children of workers that are gone without removing them (killed with
    their fork server): they are named <worker pid>-<n>."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for entry in names:
        parts = entry.split("-")
        if len(parts) != 3 or parts[0] != "shaker" or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # that worker is alive (or the pid is somebody else's now): leave it
        except PermissionError:
            continue
        except OSError:
            pass
        shutil.rmtree(os.path.join(base, entry), ignore_errors=True)


def run(code: Any, payload: dict[str, Any], accessories: dict[str, Any], unconfined: OSError | None = None) -> None:
    """Runs one workflow in this process and exits; never returns. `code` is the compiled script and
    its source, as the worker marshals them (a bare code object runs too, its traceback without source
    lines). A child that could not be given its TMPDIR and process cap (unconfined) fails the run
    instead of running it."""
    source: str | None = None
    if isinstance(code, tuple):
        code, source = code
        register_source(source)
    _apply_limits(payload)
    env = payload.get("env")
    if env:
        os.environ.update(env)
        if tempfile.tempdir:
            os.environ["TMPDIR"] = tempfile.tempdir  # the run's own, whatever its env says
    channel = Channel(FRAMES_FD)
    status = 0
    try:
        if unconfined is not None:
            raise RuntimeError(f"the run's process could not be confined ({unconfined}); it was not started")
        ctx = WorkflowContext(payload, channel, RpcClient(payload["rpc_url"], payload["token"]), accessories)
        module = types.ModuleType("workflow")
        module.__file__ = WORKFLOW_FILE
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
        frame = '{"output":' + body + ',"usage":' + json.dumps(ctx._usage.as_dict()) + "}"
        channel.send_raw(RESULT, frame.encode())
    except BaseException as e:  # SystemExit and KeyboardInterrupt are failures of the run too
        status = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        try:
            tb = format_traceback(e, source)
        except Exception:
            tb = traceback.format_exc()
        try:
            channel.send(ERROR, {"type": type(e).__name__, "message": str(e), "traceback": tb})
        except Exception:
            pass
    # The worker kills this process as soon as it has read the last frame. Exiting here instead
    # would spend a CPU on this process's teardown just when the worker needs one to relay the
    # result (measured: the relay came 0.6-1 ms later on 2 cores); killed, it tears down after.
    time.sleep(END_GRACE_SECONDS)
    os._exit(status)
