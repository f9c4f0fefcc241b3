"""The confinement of runs, built by the kernel directly (namespaces, seccomp, Landlock, rlimits).

One declarative description (`Confinement`, handed over by the Executor as JSON in
SHAKER_CONFINEMENT) says everything a run may touch; this module applies it in two steps:

  enter_worker(conf)   once, in the worker before it forks its fork server: the worker becomes not
                       dumpable, enters a network namespace with no usable interface and a mount
                       namespace whose root holds only what `conf.binds` lists, read-only (system
                       directories, the Python installation, the harness, the services' socket). As
                       a non-root server it first enters a user namespace of its own, where it may
                       build all that.
  clone_run(conf)      in the fork server, for each child: a new PID, mount, IPC and UTS namespace
                       (and user namespace, as non-root) at once, so the child is pid 1 of its own
                       namespace and every process it starts dies with it.
  confine_run(conf, uid)  in that child, before it has a run: its own /proc and a size-limited /tmp,
                       then its own principal (a uid of its own as root; a user namespace of its own
                       otherwise), no capabilities, no_new_privs, the process cap (RLIMIT_NPROC,
                       counted per uid and user namespace), Landlock, and the seccomp filter last.

`probe()` reports which of these the kernel allows; the Executor runs it at start (the banner
says what it found) and refuses to confine partly: either everything applies, or runs are marked
unconfined. Only the standard library: ctypes reaches the syscalls the os module lacks.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

# -- constants ---------------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
SIGCHLD = 17

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

# Per architecture: audit arch, then syscall numbers (clone, clone3, pivot_root, capset, and the
# deny list). x86_64 and aarch64; elsewhere probe() reports no seccomp and runs are unconfined.
_X86_64 = {
    "audit": 0xC000003E, "clone": 56, "clone3": 435, "pivot_root": 155, "capset": 126,
    "deny": {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "keyctl": 250, "add_key": 248,
        "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "kexec_load": 246,
        "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169,
        "swapon": 167, "swapoff": 168, "acct": 163, "settimeofday": 164, "clock_settime": 227,
        "clock_adjtime": 305, "adjtimex": 159, "quotactl": 179, "quotactl_fd": 443, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "lookup_dcookie": 212, "fanotify_init": 300, "syslog": 103, "ioperm": 173,
        "iopl": 172, "vhangup": 153, "kcmp": 312, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "pidfd_getfd": 438, "modify_ldt": 154, "uselib": 134, "ustat": 136,
        "sysfs": 139, "_sysctl": 156, "personality": 135, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "sethostname": 170,
        "setdomainname": 171, "create_module": 174, "get_kernel_syms": 177, "query_module": 178,
        "nfsservctl": 180,
    },
}
_AARCH64 = {
    "audit": 0xC00000B7, "clone": 220, "clone3": 435, "pivot_root": 41, "capset": 91,
    "deny": {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "keyctl": 219, "add_key": 217,
        "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "kexec_load": 104,
        "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106, "reboot": 142,
        "swapon": 224, "swapoff": 225, "acct": 89, "settimeofday": 170, "clock_settime": 112,
        "clock_adjtime": 266, "adjtimex": 171, "quotactl": 60, "quotactl_fd": 443, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "lookup_dcookie": 18, "fanotify_init": 262, "syslog": 116, "vhangup": 58,
        "kcmp": 272, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "pidfd_getfd": 438,
        "personality": 92, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "sethostname": 161, "setdomainname": 162,
    },
}
ARCH = {"x86_64": _X86_64, "aarch64": _AARCH64}.get(platform.machine())
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446

# The uid inside a non-root run's user namespace (the server's own uid outside).
RUN_UID_IN_USERNS = 1000
# Where a run builds its /tmp when bound paths must appear inside it (an empty directory of the root).
RUN_TMP_STAGE = "/run/shaker-tmp"

_libc = ctypes.CDLL(None, use_errno=True)
# clone must keep the GIL across the call (PyDLL), as os.fork does: the child has one thread.
_libc_gil = ctypes.PyDLL(None, use_errno=True)
for _f in (_libc.syscall, _libc_gil.syscall):
    _f.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class ConfinementError(OSError):
    """A step of the confinement failed: the run (or the worker) must not go on unconfined."""


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise ConfinementError(err, f"{what}: {os.strerror(err)}")
    return result


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), f"mount {target}")


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> int:
    return _check(_libc.prctl(option, arg, arg3, 0, 0), f"prctl({option})")


# -- the description --------------------------------------------------------------------------------

@dataclass
class Confinement:
    """What a run may touch, as the Executor describes it (SHAKER_CONFINEMENT, JSON)."""

    enabled: bool = False
    # Host paths bound read-only at the same path in the runs' root (missing ones are skipped).
    binds: list[str] = field(default_factory=list)
    # The directory holding the services' Unix socket, bound read-only at /run/shaker.
    socket_dir: str = ""
    # Host paths that must never be visible even when inside a bound path (the data directory).
    hidden: list[str] = field(default_factory=list)
    # Bytes of each run's private /tmp (a tmpfs, counted in the run's memory cgroup).
    tmp_bytes: int = 64 * 1024 * 1024
    # As root: each live run gets the uid uid_base + worker_slot * uid_stride + n.
    uid_base: int = 1_500_000_000
    uid_stride: int = 100_000
    worker_slot: int = 0
    # Processes (and threads) one run may have; 0 for no cap.
    max_processes: int = 64
    # Whether the server runs as root, settled before the worker enters a user namespace of its own
    # (where it is root too).
    as_root: bool = field(default_factory=lambda: os.geteuid() == 0)
    # Bound paths under /tmp, which each run binds again into its own /tmp (set by enter_worker).
    under_tmp: list[str] = field(default_factory=list)

    @staticmethod
    def from_env() -> "Confinement":
        raw = os.environ.get("SHAKER_CONFINEMENT", "")
        if not raw:
            return Confinement()
        data = json.loads(raw)
        fields = Confinement.__dataclass_fields__
        return Confinement(**{k: v for k, v in data.items() if k in fields and k not in ("as_root", "under_tmp")})

    def run_flags(self) -> int:
        flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
        return flags if self.as_root else flags | CLONE_NEWUSER


# -- the worker: once ---------------------------------------------------------------------------------

def effective_binds(conf: Confinement) -> list[str]:
    """What the runs' root holds: the Executor's list, and this interpreter's installation and
    import path (wherever it lives: a virtual environment, pyenv under a home directory)."""
    paths = list(conf.binds)
    paths += [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    paths += [p for p in sys.path if p and os.path.isabs(p)]
    out = []
    for path in paths:
        path = os.path.normpath(path)
        if path != "/" and os.path.exists(path) and path not in out:
            out.append(path)
    return out


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _map_self(inside: int, outside_uid: int, outside_gid: int) -> None:
    """Maps this process's uid and gid (outside) to `inside` in the user namespace it just entered.
    Only a dumpable process may write its own maps (a non-dumpable one's /proc files belong to
    root), so it is dumpable for these three writes; it runs nothing else meanwhile."""
    _prctl(PR_SET_DUMPABLE, 1)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inside} {outside_uid} 1\n")
    _write("/proc/self/gid_map", f"{inside} {outside_gid} 1\n")
    _prctl(PR_SET_DUMPABLE, 0)


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind(source: str, target: str, readonly: bool = True) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    if readonly:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _place(root: str, path: str) -> None:
    """Makes host `path` appear at the same path under `root`: a symlink as a symlink, a directory
    or file bound read-only."""
    target = root + path
    if os.path.islink(path):
        _mkdirs(os.path.dirname(target))
        if not os.path.lexists(target):
            os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        _mkdirs(target)
    elif os.path.exists(path):
        _mkdirs(os.path.dirname(target))
        if not os.path.exists(target):
            open(target, "w").close()
    else:
        return
    _bind(path, target)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


DEVICES = ("null", "zero", "full", "random", "urandom")


def enter_worker(conf: Confinement) -> None:
    """Puts this worker (and so its fork server and every run) into the runs' root and network
    namespace. Raises ConfinementError when the kernel refuses a step."""
    global _PROGRAM, _LANDLOCK_ABI
    _PROGRAM, _LANDLOCK_ABI = _prepare_seccomp(), landlock_abi()  # once, for every child to inherit
    _prctl(PR_SET_DUMPABLE, 0)
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if not conf.as_root:
        flags |= CLONE_NEWUSER
    _check(_libc.unshare(flags), "unshare")
    if not conf.as_root:
        _map_self(0, uid, gid)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # The new root is a tmpfs mounted over /sys of this (private) mount namespace: nothing a run
    # needs lies there, while /tmp may hold the checkout or the socket to bind.
    root = "/sys"
    _mount("shaker-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    cwd = os.getcwd()
    placed: list[str] = []
    for path in sorted(effective_binds(conf)):
        if any(_inside(path, parent) for parent in placed):
            continue  # already there, bound with its parent
        _place(root, path)
        if not os.path.islink(path):
            placed.append(path)
    _mkdirs(root + "/proc")
    if not conf.as_root:
        # A user namespace may mount a proc only where one is already fully visible: runs mount
        # their own over this one, and see only theirs. (Root needs no such thing.)
        _bind("/proc", root + "/proc", readonly=False)
    _mkdirs(root + "/tmp")
    # A checkout under /tmp (CI clones often are) would vanish under each run's private /tmp: runs
    # build their /tmp here, bind those paths back into it, and move it over /tmp.
    conf.under_tmp = [path for path in placed if _inside(path, "/tmp")]
    _mkdirs(root + RUN_TMP_STAGE)
    _mkdirs(root + "/dev")
    _mount("shaker-dev", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        if conf.as_root:
            # Nodes of their own, not bind mounts: every mount here is copied for each run, and freed.
            os.mknod(f"{root}/dev/{name}", 0o20666, os.stat(f"/dev/{name}").st_rdev)
            os.chmod(f"{root}/dev/{name}", 0o666)
        else:
            open(f"{root}/dev/{name}", "w").close()
            _bind(f"/dev/{name}", f"{root}/dev/{name}", readonly=False)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("shm", "/tmp")):
        os.symlink(target, f"{root}/dev/{name}")
    _mount(None, root + "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    if conf.socket_dir:
        _mkdirs(root + "/run/shaker")
        _bind(conf.socket_dir, root + "/run/shaker")
    for path in conf.hidden:
        # A data directory that lies inside a bound path is covered by an empty, read-only tmpfs.
        if path and os.path.isdir(root + path):
            _mount("shaker-hidden", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")
    os.chdir(root)
    _check(_libc.syscall(ARCH["pivot_root"] if ARCH else -1, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir(cwd if os.path.isdir(cwd) else "/")
    # What no process from here on may regain through exec; runs drop the rest (_RUN_SETUP_CAPS).
    _drop_bounding_set(keep=_RUN_SETUP_CAPS)


# -- each run -----------------------------------------------------------------------------------------

def clone_run(conf: Confinement) -> int:
    """Forks like os.fork, but the child starts in new namespaces (it is pid 1 of its own). Only
    from a single-threaded process (the fork server)."""
    if ARCH is None:
        raise ConfinementError(0, f"no namespace support for {platform.machine()}")
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _libc_gil.syscall(ARCH["clone"], ctypes.c_ulong(conf.run_flags() | SIGCHLD), None, None, None, None)
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise ConfinementError(err, f"clone: {os.strerror(err)}")
    return pid


def run_uid(conf: Confinement, n: int) -> int:
    """The uid of the run in slot n of this worker (as root)."""
    return conf.uid_base + conf.worker_slot * conf.uid_stride + n


def confine_run(conf: Confinement, uid: int) -> None:
    """In a child from clone_run, before it has a run: its own /proc and /tmp, its own principal,
    no capabilities, no new privileges, the process cap, Landlock and seccomp. Raises
    ConfinementError; the caller then fails the run rather than running it."""
    if not conf.as_root:
        _map_self(RUN_UID_IN_USERNS, 0, 0)
        uid = RUN_UID_IN_USERNS
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    tmp = RUN_TMP_STAGE if conf.under_tmp else "/tmp"
    _mount("shaker-tmp", tmp, "tmpfs", MS_NOSUID | MS_NODEV, f"size={max(conf.tmp_bytes, 4096)},mode=0700,uid={uid},gid={uid}")
    if conf.under_tmp:
        for path in conf.under_tmp:
            target = RUN_TMP_STAGE + path[len("/tmp"):]
            os.makedirs(target, mode=0o755, exist_ok=True)
            _bind(path, target)
        _mount(RUN_TMP_STAGE, "/tmp", None, MS_MOVE)
    _drop_bounding_set(only=_RUN_SETUP_CAPS)  # the worker dropped the others
    if conf.as_root:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to another uid: every capability is cleared
    _clear_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if conf.max_processes > 0:
        # Counted per uid (a run's own as root) and per user namespace (a run's own otherwise).
        resource.setrlimit(resource.RLIMIT_NPROC, (conf.max_processes, conf.max_processes))
    _prctl(PR_SET_PDEATHSIG, 9)  # after the uid change, which clears it: a dying fork server takes its runs along
    landlock()
    install_seccomp()


def _cap_last_cap() -> int:
    try:
        return int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        return 63


# Read once, before the worker leaves the host's /proc: every child inherits them.
CAP_LAST_CAP = _cap_last_cap()


# What the fork server and a child setting itself up still use: CAP_KILL (5), CAP_SETGID (6),
# CAP_SETUID (7), CAP_SETPCAP (8), CAP_SYS_ADMIN (21).
_RUN_SETUP_CAPS = frozenset((5, 6, 7, 8, 21))


def _drop_bounding_set(keep: frozenset[int] = frozenset(), only: frozenset[int] | None = None) -> None:
    for cap in sorted(only) if only is not None else range(CAP_LAST_CAP + 1):
        if cap in keep:
            continue
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            _check(-1, f"drop capability {cap}")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


# capset's arguments: _LINUX_CAPABILITY_VERSION_3 for this process, and two empty
# {effective, permitted, inheritable} sets. Made once; every child passes the same.
_CAPSET_HEADER = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0))
_CAPSET_EMPTY = ctypes.create_string_buffer(bytes(24))


def _clear_capabilities() -> None:
    _check(_libc.syscall(ARCH["capset"], _CAPSET_HEADER, _CAPSET_EMPTY), "capset")


# -- seccomp --------------------------------------------------------------------------------------------

_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_EPERM, _ENOSYS = 1, 38


def _ret_errno(errno: int) -> int:
    return 0x00050000 | errno


def seccomp_program() -> bytes:
    """The filter: the wrong architecture is killed; the deny list, x32 calls, and clone asking for
    a namespace fail with EPERM; clone3 fails with ENOSYS (its flags sit in memory a filter cannot
    read, and libc falls back to clone); everything else is allowed."""
    assert ARCH is not None
    deny = sorted(set(ARCH["deny"].values()))
    prog: list[tuple[int, Any, Any, int]] = []  # (code, jt label, jf label, k)
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    prog.append((LD, None, None, 4))  # seccomp_data.arch
    prog.append((JEQ, 1, 0, ARCH["audit"]))
    prog.append((RET, None, None, _RET_KILL_PROCESS))
    prog.append((LD, None, None, 0))  # seccomp_data.nr
    if ARCH is _X86_64:
        prog.append((JGE, "deny", 0, 0x40000000))
    for nr in deny:
        prog.append((JEQ, "deny", 0, nr))
    prog.append((JEQ, "enosys", 0, ARCH["clone3"]))
    prog.append((JEQ, 0, "allow", ARCH["clone"]))
    prog.append((LD, None, None, 16))  # low half of args[0]: clone's flags
    prog.append((JSET, "deny", "allow", NAMESPACE_FLAGS))
    labels = {"allow": len(prog), "deny": len(prog) + 1, "enosys": len(prog) + 2}
    prog.append((RET, None, None, _RET_ALLOW))
    prog.append((RET, None, None, _ret_errno(_EPERM)))
    prog.append((RET, None, None, _ret_errno(_ENOSYS)))
    out = b""
    for i, (code, jt, jf, k) in enumerate(prog):
        rel = lambda j: 0 if j is None else (j if isinstance(j, int) else labels[j] - i - 1)  # noqa: E731
        out += struct.pack("=HBBI", code, rel(jt), rel(jf), k)
    return out


_PROGRAM: tuple[Any, Any] | None = None  # the filter's instructions and its sock_fprog, once made


def _prepare_seccomp() -> tuple[Any, Any]:
    program = seccomp_program()
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(struct.pack("@HP", len(program) // 8, ctypes.addressof(buf)))
    return buf, fprog


def install_seccomp() -> None:
    global _PROGRAM
    if _PROGRAM is None:
        _PROGRAM = _prepare_seccomp()
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(_PROGRAM[1]), 0, 0), "seccomp")


# -- Landlock ----------------------------------------------------------------------------------------------

def landlock_abi() -> int:
    abi = _libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return abi if abi > 0 else 0


# Write-side rights only: reads and execution stay with the mount view (a read-only root).
_FS_WRITE = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)
_FS_REFER, _FS_TRUNCATE, _FS_WRITE_FILE = 1 << 13, 1 << 14, 1 << 1


_LANDLOCK_ABI: int | None = None


def landlock() -> int:
    """Restricts this process's writes to /tmp and the /dev nodes, denies TCP bind and connect
    (ABI 4+), and scopes abstract Unix sockets and signals to the run (ABI 6+). Returns the ABI
    applied (0 where the kernel has no Landlock: the mount view still holds)."""
    global _LANDLOCK_ABI
    if _LANDLOCK_ABI is None:
        _LANDLOCK_ABI = landlock_abi()
    abi = _LANDLOCK_ABI
    if abi < 1:
        return 0
    handled = _FS_WRITE | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    net = 0b11 if abi >= 4 else 0
    scoped = 0b11 if abi >= 6 else 0
    attr = struct.pack("=QQQ", handled, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    abuf = ctypes.create_string_buffer(attr, len(attr))
    fd = _check(_libc.syscall(LANDLOCK_CREATE_RULESET, abuf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)), "landlock")
    try:
        for path, access in (("/tmp", handled), ("/dev", _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0))):
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access, pfd), 12)
                _check(_libc.syscall(LANDLOCK_ADD_RULE, fd, 1, rule, 0), f"landlock rule {path}")
            finally:
                os.close(pfd)
        _check(_libc.syscall(LANDLOCK_RESTRICT_SELF, fd, 0), "landlock restrict")
    finally:
        os.close(fd)
    return abi


# -- probe ----------------------------------------------------------------------------------------------

def probe(conf: Confinement) -> dict[str, Any]:
    """Tries the whole confinement in a throwaway process tree and reports what held: the Executor
    confines runs only when `confined` is true."""
    report: dict[str, Any] = {"confined": False, "as_root": conf.as_root, "arch": platform.machine(),
                              "landlock_abi": landlock_abi(), "error": "", "binds": effective_binds(conf)}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result: dict[str, Any] = {}
        try:
            enter_worker(conf)
            child = clone_run(conf)
            if child == 0:
                try:
                    confine_run(conf, run_uid(conf, 0))
                    status = open("/proc/self/status").read()
                    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                    # What a workflow imports later must be readable by the run's principal.
                    readable = all(os.access(p, os.R_OK | os.X_OK) for p in (os.path.dirname(os.__file__), os.path.dirname(__file__)))
                    ok = {"pid1": os.getpid() == 1, "python_readable": readable, "cap_eff_zero": int(fields["CapEff"].strip(), 16) == 0,
                          "no_new_privs": fields["NoNewPrivs"].strip() == "1", "seccomp": fields["Seccomp"].strip() == "2",
                          "uid_not_root": os.getuid() != 0}
                    try:
                        os.listdir(conf.hidden[0]) if conf.hidden else None
                        ok["data_hidden"] = not conf.hidden or not os.listdir(conf.hidden[0])
                    except OSError:
                        ok["data_hidden"] = True
                    os.write(w, json.dumps(ok).encode())
                    os._exit(0)
                except BaseException as e:  # noqa: BLE001
                    os.write(w, json.dumps({"error": str(e)}).encode())
                    os._exit(1)
            os.waitpid(child, 0)
        except BaseException as e:  # noqa: BLE001
            result = {"error": str(e)}
            os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    try:
        checks = json.loads(data) if data else {"error": "the probe printed nothing"}
    except ValueError:
        checks = {"error": data.decode(errors="replace")}
    report["error"] = checks.pop("error", "")
    report["checks"] = checks
    report["confined"] = not report["error"] and bool(checks) and all(checks.values())
    if report["confined"] is False and not report["error"]:
        report["error"] = "checks failed: " + ", ".join(k for k, v in checks.items() if not v)
    return report


if __name__ == "__main__":
    print(json.dumps(probe(Confinement.from_env())))
    sys.stdout.flush()
