# Attack 13: reach the network: raw TCP connections to the server, to PostgreSQL, to a listener the
# test opened on every address of the host, and to the cloud metadata address; ctx.http to the
# server and to the metadata address; and the interfaces the run sees.
import fcntl


def execute(ctx):
    rep = Report(ctx)
    port, trap = int(ctx.input["server_port"]), int(ctx.input["trap_port"])
    targets = [("127.0.0.1", port), ("127.0.0.1", 5432), ("127.0.0.1", trap), ("::1", trap), ("169.254.169.254", 80)]
    for addr in ctx.input["host_addrs"]:
        targets += [(addr, trap), (addr, port)]
    for host, p in targets:
        rep.run("connect to [%s]:%d" % (host, p), lambda host=host, p=p: _connect(host, p))
    rep.run("send a UDP datagram to [127.0.0.1]:%d" % trap, lambda: _udp("127.0.0.1", trap))
    for url in ("http://127.0.0.1:%d/v1/models" % port, "http://169.254.169.254/"):
        rep.run("ctx.http.get " + url, lambda url=url: "answered %s" % ctx.http.get(url, timeout=5).status)
    names = [name for _, name in socket.if_nameindex()]
    up = {}
    for name in names:
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                flags = struct.unpack("H", fcntl.ioctl(s.fileno(), 0x8913, struct.pack("256s", name.encode()))[16:18])[0]
            finally:
                s.close()
            up[name] = bool(flags & 1)
        except OSError as e:
            up[name] = describe(e)
    return {"attempts": rep.attempts, "interfaces": names, "up": up}


def _connect(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        return "connected"
    finally:
        s.close()


def _udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return "sent %d bytes" % s.sendto(b"attack", (host, port))
    finally:
        s.close()
