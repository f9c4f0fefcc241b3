"""Length-prefixed frames (a 4-byte big-endian length, then the body), as every pipe between the
Executor, the worker, the fork server and a run carries them; and the kill of a run's processes."""
from __future__ import annotations

import os
import signal
import struct

FRAME = struct.Struct(">I")


def write_all(fd: int, data: bytes) -> None:
    """Writes all of data to a blocking descriptor (os.write may write part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_frame(fd: int, body: bytes) -> None:
    write_all(fd, FRAME.pack(len(body)) + body)


def split_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """The complete frames' bodies at the start of buf, and what is left of an incomplete one."""
    bodies = []
    offset = 0
    while len(buf) - offset >= 4:
        (n,) = FRAME.unpack_from(buf, offset)
        if len(buf) - offset - 4 < n:
            break
        bodies.append(buf[offset + 4:offset + 4 + n])
        offset += 4 + n
    return bodies, buf[offset:]


class FrameReader:
    """Reads frames from a blocking descriptor, keeping an incomplete one for the next read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def read(self) -> list[bytes] | None:
        """The frames one read completed (maybe none); None at the end of the descriptor."""
        data = os.read(self.fd, 1 << 20)
        if not data:
            return None
        bodies, self.buf = split_frames(self.buf + data if self.buf else data)
        return bodies


def kill_group(pid: int) -> None:
    """SIGKILLs the process group a child leads (the child and whatever it forked), if any is left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
