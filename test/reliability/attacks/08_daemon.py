# Attack 8: leave a daemon behind: double fork, setsid, exec `sleep 987654`.


def execute(ctx):
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                try:
                    os.setsid()
                except OSError:
                    pass
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 1024)
                for argv in (["/bin/sleep", "987654"], ["/usr/bin/sleep", "987654"]):
                    try:
                        os.execv(argv[0], argv)
                    except OSError:
                        pass
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(987654)", "987654"])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    seen = []
    for _ in range(40):
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if b"987654" in read_file("/proc/%s/cmdline" % p).split(b"\0"):
                        seen.append(int(p))
                except OSError:
                    pass
        if seen:
            break
        time.sleep(0.05)
    return {"daemon_seen": bool(seen)}
