# Attack 9: hold more memory than the run may have: 8 processes, each allocating and touching
# 200 MiB, all alive at once. Succeeds (returns {"held": 8}) only if all 8 held their memory.


def execute(ctx):
    count = int(ctx.input.get("processes", 8))
    size = int(ctx.input.get("mib", 200)) << 20
    release_r, release_w = os.pipe()
    kids = []
    for _ in range(count):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.close(release_w)
            try:
                blob = bytearray(size)
                for i in range(0, size, 4096):
                    blob[i] = 1
                os.write(w, b"held")
            except MemoryError:
                os.write(w, b"MemoryError")
            os.read(release_r, 1)
            os._exit(0)
        os.close(w)
        kids.append((pid, r))
    held = 0
    said = []
    for pid, r in kids:
        answer = os.read(r, 64).decode() or "died"
        said.append(answer)
        held += answer == "held"
    ctx.emit({"held": held, "said": said})
    os.close(release_w)
    for pid, _ in kids:
        os.waitpid(pid, 0)
    if held < count:
        raise MemoryError("only %d of %d processes could hold %d MiB: %s" % (held, count, size >> 20, said))
    return {"held": held}
