# Attack 1: read the server's SQLite files and every file under its data directory (path given).


def execute(ctx):
    rep = Report(ctx)
    data_dir = ctx.input["data_dir"]
    rep.run("stat the data directory " + data_dir, lambda: "exists, mode %o" % os.stat(data_dir).st_mode)
    rep.run("list the data directory", lambda: _nonempty(os.listdir(data_dir)))
    # By name, in case listing is refused but the files are there.
    names = ["registry.db", "executor.db", "modelproxy.db", "datastore.db"]
    names += [n + suffix for n in names for suffix in ("-wal", "-shm", "-journal")]
    seen = set()
    for name in names:
        path = os.path.join(data_dir, name)
        seen.add(path)
        if name.endswith(".db") or os.path.exists(path):
            rep.run("read " + path, lambda path=path: summary(read_file(path, 64 << 20)))
    # Everything a walk finds.
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            path = os.path.join(root, name)
            if path not in seen:
                rep.run("read " + path, lambda path=path: summary(read_file(path, 64 << 20)))
    return {"attempts": rep.attempts}


def _nonempty(names):
    if not names:
        raise OSError(errno.ENOENT, "the directory is empty")
    return "lists %s" % sorted(names)
