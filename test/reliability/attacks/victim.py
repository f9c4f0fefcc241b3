# Account A's victim: holds its per-invocation secret (and its run token, wherever the harness keeps
# it) in memory, many times over, while the attacks run; then proves it was not tampered with.
# The test finds its host pid by the file it keeps open (named after the marker).


def execute(ctx):
    secret = ctx.secrets["VICTIM_SECRET"]
    marker = ctx.input["marker"]
    hoard = ["HOARD:%s:%d" % (secret, i) for i in range(64)]
    held = open(os.path.join(tempfile.gettempdir(), marker), "w")
    held.write("victim\n")
    held.flush()
    ctx.emit({"ready": True})
    released = hold(ctx, marker)
    held.close()
    intact = all(h == "HOARD:%s:%d" % (secret, i) for i, h in enumerate(hoard))
    return {
        "who": "A",
        "marker": marker,
        "secret_sha": hashlib.sha256(secret.encode()).hexdigest(),
        "hoard_intact": intact,
        "released": released,
    }
