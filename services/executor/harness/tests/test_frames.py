"""The frame codec every pipe of the harness uses (PROTOCOL.md)."""
from __future__ import annotations

import os
import unittest

from shaker.frames import FROM_RUN, FRAME, FrameBuffer, FrameReader, FrameTooLarge, write_frame


def frame(body: bytes) -> bytes:
    return FRAME.pack(len(body)) + body


class FrameBufferTest(unittest.TestCase):
    def test_cuts_frames_split_anywhere(self) -> None:
        stream = frame(b"Ea") + frame(b"") + frame(b"R" + b"x" * 1000)
        for cut in range(len(stream)):
            buf = FrameBuffer()
            got = buf.feed(stream[:cut]) + buf.feed(stream[cut:])
            self.assertEqual(got, [b"Ea", b"", b"R" + b"x" * 1000], cut)
            self.assertTrue(buf.empty)

    def test_large_frame_in_many_reads_keeps_every_byte(self) -> None:
        body = os.urandom(3 * 1024 * 1024)
        data = frame(body)
        buf = FrameBuffer()
        out: list[bytes] = []
        for i in range(0, len(data), 65536):
            out += buf.feed(data[i:i + 65536])
        self.assertEqual(out, [body])

    def test_refuses_a_header_over_the_limit_before_its_body(self) -> None:
        buf = FrameBuffer(limit=10)
        self.assertEqual(buf.feed(frame(b"0123456789")), [b"0123456789"])
        with self.assertRaises(FrameTooLarge) as caught:
            buf.feed(FRAME.pack(11))
        self.assertEqual((caught.exception.size, caught.exception.limit), (11, 10))

    def test_reader_reads_frames_from_a_pipe_and_its_end(self) -> None:
        r, w = os.pipe()
        write_frame(w, b"one")
        write_frame(w, b"two")
        os.close(w)
        reader = FrameReader(r)
        self.assertEqual(reader.read(), [b"one", b"two"])
        self.assertIsNone(reader.read())
        os.close(r)

    def test_a_run_may_send_only_data_kinds(self) -> None:
        self.assertEqual(sorted(FROM_RUN), [b"A", b"E", b"L", b"R", b"X"])


if __name__ == "__main__":
    unittest.main()
