# Attack 14 (a probe more than an attack): who the run is. Its uid, capabilities, no_new_privs,
# seccomp mode, pid, the pids /proc shows it, its user namespace, and whether the syscalls a run
# must not make are denied (EPERM/EACCES/ENOSYS or a kill) rather than reaching the kernel. Keeps a
# file named after the marker open and runs until released, so the test can find its host pid.
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000


def execute(ctx):
    marker = ctx.input["marker"]
    held = open(os.path.join(tempfile.gettempdir(), marker), "w")
    status = read_file("/proc/self/status").decode()

    def field(name):
        m = re.search(r"^%s:\s*(.*)$" % name, status, re.M)
        return m.group(1).strip() if m else None

    scratch = tempfile.mkdtemp()
    me = os.getpid()
    own = ctypes.create_string_buffer(b"x" * 64)
    probes = {
        "ptrace": lambda: check(libc.ptrace(PTRACE_TRACEME, 0, None, None)) or "traced",
        "process_vm_readv": lambda: "read %d bytes" % len(vm_read(os.getpid(), ctypes.addressof(own), 8)),
        "mount": lambda: check(libc.mount(b"none", scratch.encode(), b"tmpfs", 0, None)) or libc.umount2(scratch.encode(), 2) or "mounted",
        # scratch is no mount point: an unfiltered umount2 reaches the kernel and fails with EINVAL
        # (or EPERM without capabilities); never a real mount point, which could be the host's.
        "umount2": lambda: check(libc.umount2(scratch.encode(), 2)) or "unmounted",
        "unshare": lambda: check(libc.unshare(CLONE_NEWUSER)) or "unshared",
        "setns": lambda: check(libc.setns(os.open("/proc/self/ns/mnt", os.O_RDONLY), 0)) or "joined",
        "keyctl": lambda: "keyring %d" % check(libc.syscall(SYS_KEYCTL, 0, ctypes.c_long(-3), 0)),
        "bpf": lambda: check(libc.syscall(SYS_BPF, 0, None, 0)) or "bpf answered",
    }
    info = {
        "marker": marker,
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "pid": me,
        "cap_eff": field("CapEff"),
        "no_new_privs": field("NoNewPrivs"),
        "seccomp": field("Seccomp"),
        "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "userns": os.readlink("/proc/self/ns/user"),
        "syscalls": {name: denied(fn) for name, fn in probes.items()},
    }
    ctx.emit(info)
    info["released"] = hold(ctx, marker)
    held.close()
    return info
