"""Length-prefixed frames (a 4-byte big-endian length, then the body), as every pipe between the
Executor, the worker, the fork server and a run carries them; and the kill of a run's processes."""
from __future__ import annotations

import os
import signal
import struct

FRAME = struct.Struct(">I")

# A frame about a run starts with one byte naming its kind; JSON follows (PROTOCOL.md).
# What a run's own process may send on its frames pipe, and nothing else:
EMIT, LOG, ACCESSORY, RESULT, ERROR = b"E", b"L", b"A", b"R", b"X"
FROM_RUN = frozenset((EMIT, LOG, ACCESSORY, RESULT, ERROR))
# What the worker says of a run, on its own knowledge (never relayed from a run):
STARTED, EXIT, OUTPUT, NEED_SOURCE = b"S", b"Q", b"O", b"N"


def write_all(fd: int, data: bytes) -> None:
    """Writes all of data to a blocking descriptor (os.write may write part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_frame(fd: int, body: bytes) -> None:
    write_all(fd, FRAME.pack(len(body)) + body)


class FrameTooLarge(ValueError):
    """A frame's header announced more bytes than the reader accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class FrameBuffer:
    """Cuts a byte stream into frames in linear time: every byte is appended once and copied once
    into its frame, however many reads a large frame arrives in. A header that announces more than
    `limit` bytes raises FrameTooLarge before any of the body is kept."""

    def __init__(self, limit: int = 1 << 31) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.pending = 0  # the body size the next frame's header announced, once it was read

    def feed(self, data: bytes) -> list[bytes]:
        """The frames `data` completed, in order (maybe none)."""
        buf = self.buf
        buf += data
        bodies: list[bytes] = []
        offset = 0
        while len(buf) - offset >= 4:
            (n,) = FRAME.unpack_from(buf, offset)
            if n > self.limit:
                raise FrameTooLarge(n, self.limit)
            if len(buf) - offset - 4 < n:
                self.pending = n
                break
            bodies.append(bytes(buf[offset + 4:offset + 4 + n]))
            offset += 4 + n
            self.pending = 0
        if offset:
            del buf[:offset]
        return bodies

    @property
    def empty(self) -> bool:
        return not self.buf


class FrameReader:
    """Reads frames from a blocking descriptor, keeping an incomplete one for the next read."""

    def __init__(self, fd: int, limit: int = 1 << 31) -> None:
        self.fd = fd
        self.frames = FrameBuffer(limit)

    def read(self) -> list[bytes] | None:
        """The frames one read completed (maybe none); None at the end of the descriptor."""
        data = os.read(self.fd, 1 << 20)
        if not data:
            return None
        return self.frames.feed(data)


def kill_group(pid: int) -> None:
    """SIGKILLs the process group a child leads (the child and whatever it forked), if any is left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
