# Attack 11: change the mount view with mount(2)/umount2(2) through ctypes: unmount /tmp, mount a
# tmpfs over it, remount / read-write, mount a procfs, and make or join mount namespaces.
#
# Safety: today a run without a sandbox shares the host's mount namespace with root's
# capabilities, where these calls would unmount or hide the host's /tmp. When this run's mount
# namespace is the host's (its id is given), that fact alone is reported as a breach and the
# mounts are aimed at a scratch directory of the run instead (and undone if they worked).
MNT_DETACH, MS_REMOUNT, MS_BIND = 2, 32, 4096
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000


def execute(ctx):
    rep = Report(ctx)
    host_ns = os.readlink("/proc/self/ns/mnt") == ctx.input["host_mnt_ns"]
    scratch = tempfile.mkdtemp()
    if host_ns:
        rep.add("run in the host's mount namespace", True, os.readlink("/proc/self/ns/mnt"))
    tmp = scratch if host_ns else "/tmp"
    if not host_ns:
        rep.child("umount2(/tmp, MNT_DETACH)", lambda: check(libc.umount2(b"/tmp", MNT_DETACH)) or "unmounted /tmp")
        rep.child("umount2(/tmp)", lambda: check(libc.umount2(b"/tmp", 0)) or "unmounted /tmp")
        rep.child("remount / read-write", lambda: check(libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None)) or "remounted /")
    rep.child("mount a tmpfs over " + tmp, lambda: _mounted(tmp, lambda: libc.mount(b"none", tmp.encode(), b"tmpfs", 0, b"size=1m")))
    proc_dir = os.path.join(scratch, "proc")
    os.mkdir(proc_dir)
    rep.child("mount a procfs on " + proc_dir, lambda: _mounted(proc_dir, lambda: libc.mount(b"proc", proc_dir.encode(), b"proc", 0, None)))
    rep.child("unshare(CLONE_NEWNS)", lambda: check(libc.unshare(CLONE_NEWNS)) or "unshared")
    rep.child("unshare(CLONE_NEWUSER|CLONE_NEWNS)", lambda: check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS)) or "unshared")
    rep.child("setns(/proc/1/ns/mnt)", lambda: _setns("/proc/1/ns/mnt"))
    return {"attempts": rep.attempts}


def _mounted(target, do):
    check(do())
    libc.umount2(target.encode(), MNT_DETACH)
    return "mounted (and unmounted again)"


def _setns(path):
    fd = os.open(path, os.O_RDONLY)
    check(libc.setns(fd, 0))
    return "joined"
