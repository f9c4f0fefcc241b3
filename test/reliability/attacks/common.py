# Helpers every attack workflow starts with: test/reliability/attacks.test.ts uploads this file
# followed by one attack file, as one script. Standard library only; Python 3.9 or newer.
#
# An attack records each thing it tries as an "attempt": {"what", "ok", "detail"}, where ok means
# the attack step WORKED (a breach). Every attempt is also emitted at once, so a run that is killed
# midway (seccomp, OOM, a killed worker) still leaves its report on the run record.
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import platform
import re
import signal
import socket
import struct
import sys
import tempfile
import time

# What an attacker looks for in what it manages to read: the victim's per-invocation secret, run
# tokens, API keys (the server's environment holds the admin key) and account A's workflow source.
LOOT = [
    re.compile(rb"VICTIM-SECRET-[0-9a-f]{32}"),
    re.compile(rb"srt\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),
    re.compile(rb"sk-shaker-[A-Za-z0-9_-]{8,}"),
    re.compile(rb"A-ECHO-MARK-[0-9a-f]{16}"),
    re.compile(rb"HOARD:[A-Za-z0-9:._-]{8,60}"),
]

_MACHINE = platform.machine()
# Syscall numbers without a glibc wrapper (x86_64, aarch64).
SYS_KEYCTL = 250 if _MACHINE == "x86_64" else 219
SYS_BPF = 321 if _MACHINE == "x86_64" else 280

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


libc.process_vm_readv.restype = ctypes.c_ssize_t
libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.c_ulong]
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.syscall.restype = ctypes.c_long


def check(ret):
    """Raises OSError for a libc call that returned -1."""
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def loot(data, found=None):
    """The secret-looking strings in data (at most 12)."""
    found = set() if found is None else found
    for rx in LOOT:
        for m in rx.finditer(data):
            if len(found) >= 12:
                return found
            found.add(m.group(0).decode("ascii", "replace"))
    return found


def describe(e):
    if isinstance(e, OSError) and e.errno is not None:
        return "%s (%s): %s" % (type(e).__name__, errno.errorcode.get(e.errno, e.errno), e.strerror)
    return "%s: %s" % (type(e).__name__, e)


class Report:
    def __init__(self, ctx, emit=True):
        self.ctx = ctx
        self.emit = emit
        self.attempts = []

    def add(self, what, ok, detail=""):
        attempt = {"what": what, "ok": bool(ok), "detail": str(detail)[:400]}
        self.attempts.append(attempt)
        if self.emit:
            try:
                self.ctx.emit({"attempt": attempt})
            except Exception:
                pass
        return attempt

    def run(self, what, fn):
        """Tries fn here: it returns a detail when the step worked and raises when it failed."""
        try:
            detail = fn()
        except Exception as e:
            return self.add(what, False, describe(e))
        return self.add(what, True, detail)

    def child(self, what, fn):
        """Tries fn in a forked child, so a step the sandbox answers by killing (seccomp) ends only
        that child and the attack goes on."""
        outcome = in_child(fn)
        return self.add(what, outcome["ok"], outcome["detail"])


def in_child(fn, timeout=20.0):
    """Runs fn in a forked child: {"ok": True, "detail"} when it returned, {"ok": False, ...} when it
    raised or the child died (killed by seccomp, for one)."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        return {"ok": False, "detail": "could not fork to try it: " + describe(e), "errno": None}
    if pid == 0:
        os.close(r)
        try:
            detail = fn()
            out = {"ok": True, "detail": str(detail)[:2000], "errno": None}
        except BaseException as e:
            out = {"ok": False, "detail": describe(e), "errno": getattr(e, "errno", None)}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.time() + timeout
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        if time.time() > deadline:
            break
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if chunks:
        return json.loads(b"".join(chunks))
    if os.WIFSIGNALED(status):
        return {"ok": False, "detail": "the child was killed by signal %d" % os.WTERMSIG(status), "errno": None, "signal": os.WTERMSIG(status)}
    return {"ok": False, "detail": "the child exited with status %d and said nothing" % status, "errno": None}


def denied(fn):
    """Tries a syscall in a child; denied when it failed with EPERM/EACCES/ENOSYS or the child was
    killed (a seccomp filter), not denied when it worked or reached the kernel (EINVAL, EFAULT...)."""
    outcome = in_child(fn)
    if outcome["ok"]:
        return {"denied": False, "detail": "worked: " + outcome["detail"][:200]}
    if outcome.get("errno") in (errno.EPERM, errno.EACCES, errno.ENOSYS) or outcome.get("signal"):
        return {"denied": True, "detail": outcome["detail"][:200]}
    return {"denied": False, "detail": "reached the kernel: " + outcome["detail"][:200]}


def read_file(path, limit=1 << 20):
    with open(path, "rb") as f:
        return f.read(limit)


def summary(data):
    found = sorted(loot(data))
    return "read %d bytes%s" % (len(data), ("; found " + ", ".join(found)) if found else "")


def writable_regions(pid, limit):
    """The rw regions of a process's memory (from /proc/<pid>/maps), at most limit bytes in all."""
    regions = []
    total = 0
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if not parts[1].startswith("rw") or (len(parts) > 5 and parts[5].startswith("[v")):
                continue
            size = min(end - start, limit - total)
            if size <= 0:
                break
            regions.append((start, start + size))
            total += size
    return regions


def scan_mem(pid, limit=128 << 20):
    """Reads a process's writable memory through /proc/<pid>/mem and looks for secrets in it."""
    fd = os.open("/proc/%d/mem" % pid, os.O_RDONLY)
    found = set()
    total = 0
    try:
        for start, end in writable_regions(pid, limit):
            offset = start
            while offset < end:
                try:
                    data = os.pread(fd, min(1 << 20, end - offset), offset)
                except OSError:
                    break
                if not data:
                    break
                total += len(data)
                loot(data, found)
                offset += max(len(data) - 256, 1)
    finally:
        os.close(fd)
    if total == 0:
        raise OSError(errno.EIO, "nothing of its memory could be read")
    return "read %d bytes of its memory; found %s" % (total, sorted(found))


def vm_read(pid, addr, n):
    buf = ctypes.create_string_buffer(n)
    local = iovec(ctypes.cast(buf, ctypes.c_void_p), n)
    remote = iovec(ctypes.c_void_p(addr), n)
    got = check(libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))
    return buf.raw[:got]


def scan_vm(pid, limit=128 << 20):
    """Reads a process's writable memory with process_vm_readv and looks for secrets in it."""
    try:
        regions = writable_regions(pid, limit)
    except OSError:
        regions = [(0x400000, 0x401000)]  # maps hidden: the syscall itself is still tried
    found = set()
    total = 0
    last = None
    for start, end in regions:
        offset = start
        while offset < end:
            try:
                data = vm_read(pid, offset, min(1 << 20, end - offset))
            except OSError as e:
                last = e
                break
            total += len(data)
            loot(data, found)
            offset += max(len(data) - 256, 1)
    if total == 0:
        raise last or OSError(errno.EIO, "nothing read")
    return "read %d bytes of its memory; found %s" % (total, sorted(found))


PTRACE_TRACEME, PTRACE_PEEKDATA, PTRACE_ATTACH, PTRACE_DETACH = 0, 2, 16, 17


def ptrace_attach(pid):
    """PTRACE_ATTACH, wait for the stop, detach again (the tracee goes on)."""
    check(libc.ptrace(PTRACE_ATTACH, pid, None, None))
    try:
        os.waitpid(pid, 0x40000000)  # __WALL
    finally:
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    return "attached to %d and detached" % pid


def hold(ctx, key, max_seconds=200.0):
    """Keeps the run going until the test writes the record `key` into the account's store "ctl"."""
    deadline = time.time() + max_seconds
    while time.time() < deadline:
        try:
            if ctx.datastore.get("ctl", key):
                return True
        except Exception:
            pass
        time.sleep(0.25)
    return False


def frame(body):
    return struct.pack(">I", len(body)) + body
