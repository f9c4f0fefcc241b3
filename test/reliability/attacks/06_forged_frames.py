# Attack 6: forge the worker protocol from inside a run. The frames are written in both the
# protocol's older form (JSON with a "t" field) and its current one (a kind byte, then JSON):
#   mode "claim":   frames saying this run's process is the victim's (so killing this run would kill
#                   the victim) on fds 4, 3, 1 and 2; then emits "armed" and sleeps until cancelled;
#   mode "garbage": frames saying the run has exited, that its process is the victim's, broken
#                   results, and random bytes, on fds 4, 3, 1 and 2; then sleeps 2 s, returns "done";
#   mode "stdout":  the same bytes on fds 3, 1 and 2 only (not the frames pipe); sleeps 2 s, returns "done".


def execute(ctx):
    victim = int(ctx.input["victim_pid"])
    claim = [
        frame(json.dumps({"t": "started", "pid": victim}).encode()),
        frame(b"S" + json.dumps({"pid": victim}).encode()),
    ]
    mode = ctx.input["mode"]
    if mode == "claim":
        for fd in (4, 3, 1, 2):
            _write(fd, b"".join(claim))
        ctx.emit("armed")
        time.sleep(60)
        return "not cancelled"
    exit_ = {"code": 0, "signal": 0, "output_truncated": False, "memory_exceeded": False}
    forged = claim + [
        frame(json.dumps(dict(exit_, t="exit")).encode()),
        frame(b"Q" + json.dumps(exit_).encode()),
        frame(b'{"t":"result","output":{"t":"exit"'),
        frame(b'R{"output":{"t":"exit"'),
        os.urandom(4096),
    ]
    for fd in ((4, 3, 1, 2) if mode == "garbage" else (3, 1, 2)):
        for data in forged:
            _write(fd, data)
    time.sleep(2)
    return "done"


def _write(fd, data):
    try:
        os.write(fd, data)
    except OSError:
        pass
