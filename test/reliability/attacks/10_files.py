# Attack 10: leave files behind and fill the disk: 500 MiB into $TMPDIR and into /tmp (in 32 MiB
# files, under the per-file size limit), and 1 MiB into every other place that might be writable.
# Every file is under a directory named shaker-attack-<marker>, so the test can look for them.


def execute(ctx):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file over RLIMIT_FSIZE fails with EFBIG instead
    marker = ctx.input["marker"]
    name = "shaker-attack-" + marker
    tmpdir = tempfile.gettempdir()
    results = []
    places = [(tmpdir, int(ctx.input["big_mib"])), ("/tmp", int(ctx.input["big_mib"]))]
    for d in ["/", "/dev/shm", "/var/tmp", "/run", "/run/lock", "/var/lib", os.environ.get("HOME", ""),
              ctx.input["home"], ctx.input["data_dir"]]:
        if d and d not in [p for p, _ in places]:
            places.append((d, 1))
    for d, mib in places:
        written, error = _fill(os.path.join(d, name), mib)
        result = {"dir": d, "written": written, "error": error}
        results.append(result)
        ctx.emit({"filled": result})
    return {"tmpdir": tmpdir, "results": results}


def _fill(d, mib):
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        return 0, describe(e)
    chunk = b"\xa5" * (1 << 20)
    written = 0
    part = 0
    while written < mib << 20:
        try:
            fd = os.open(os.path.join(d, "part-%d" % part), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            return written, describe(e)
        part += 1
        try:
            for _ in range(min(32, mib - (written >> 20))):
                n = os.write(fd, chunk)
                written += n
                if n < len(chunk):
                    return written, "short write"
        except OSError as e:
            return written, describe(e)
        finally:
            os.close(fd)
    return written, ""
