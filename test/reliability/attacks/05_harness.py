# Attack 5: change the harness on disk (paths given) and kill the workers and fork servers (host
# pids given). The harness files are opened for appending but nothing is written, and a file created
# in the harness is removed at once: the attempt shows the harness is writable without changing it.


def execute(ctx):
    rep = Report(ctx)
    me = os.getpid()
    harness = ctx.input["harness_dir"]
    for path in ctx.input["files"]:
        rep.run("open %s for writing" % path, lambda path=path: _open_append(path))
    created = os.path.join(harness, "shaker", "zz_attack_%s.py" % ctx.input["marker"])
    rep.run("create " + created, lambda: _create(created))
    rep.run("create " + os.path.join(harness, "sitecustomize.py"), lambda: _create(os.path.join(harness, "sitecustomize.py")))
    rep.run("link a new name into " + harness, lambda: _link(ctx.input["files"][0]))
    for pid in [int(p) for p in ctx.input["pids"] if int(p) != me]:
        rep.run("kill(%d, SIGKILL)" % pid, lambda pid=pid: os.kill(pid, signal.SIGKILL) or "killed")
    return {"attempts": rep.attempts}


def _open_append(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.close(fd)
    return "opened for writing"


def _create(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    os.unlink(path)
    return "created (and removed again)"


def _link(path):
    os.link(path, path + ".attack")
    os.unlink(path + ".attack")
    return "linked a new name into the harness (and removed it again)"
