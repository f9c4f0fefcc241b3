# Attack 12: one 48 MiB ctx.emit. Either the value is delivered intact, or emit raises a clear error.


def execute(ctx):
    n = int(ctx.input.get("mib", 48)) << 20
    unit = "0123456789abcdef"
    big = unit * (n // len(unit))
    sha = hashlib.sha256(big.encode()).hexdigest()
    try:
        ctx.emit(big)
        outcome = "emitted"
    except Exception as e:
        outcome = "%s: %s" % (type(e).__name__, e)
    del big
    return {"outcome": outcome, "sha": sha, "length": n}
