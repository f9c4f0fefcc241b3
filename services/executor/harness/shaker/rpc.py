"""A Connect-protocol client on the standard library: JSON over HTTP/1.1 with keep-alive.

Unary calls POST application/json; server-streaming calls POST application/connect+json and read
enveloped messages (1 flag byte, 4-byte big-endian length, JSON), the last one flagged end-of-stream.
"""
from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import urllib.parse
from typing import Any, Iterator


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket: how a confined run, which has no network, reaches the services."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class RpcError(Exception):
    """An RPC failed: `code` is the Connect code (e.g. "not_found"), `message` the service's text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class RpcClient:
    """Calls the platform's services as the current run, authenticated by its run token."""

    def __init__(self, base_url: str, token: str, timeout: float = 600.0) -> None:
        """base_url is `unix:/path/to/socket` or `http://host:port`."""
        self._socket = base_url[len("unix:"):] if base_url.startswith("unix:") else ""
        parsed = urllib.parse.urlsplit("" if self._socket else base_url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 80
        self._token = token
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._seq = 0
        self._seq_lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._socket:
                self._conn = _UnixConnection(self._socket, self._timeout)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _next_seq(self) -> int:
        with self._seq_lock:
            seq = self._seq
            self._seq += 1
            return seq

    def _post(self, path: str, body: bytes, content_type: str, timeout: float | None, journal: bool) -> http.client.HTTPResponse:
        headers = {
            "Content-Type": content_type,
            "Authorization": "Bearer " + self._token,
            "Connect-Protocol-Version": "1",
        }
        if journal:
            # The call's place among the run's journaled calls: a resumed run replays by it.
            headers["Shaker-Call-Seq"] = str(self._next_seq())
        if timeout is not None:
            headers["Connect-Timeout-Ms"] = str(max(1, int(timeout * 1000)))
        # One retry on a fresh connection: a keep-alive socket the server closed fails on first use.
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request("POST", path, body=body, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.CannotSendRequest):
                conn.close()
                self._conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def call(self, service: str, method: str, request: dict[str, Any], timeout: float | None = None,
             journal: bool = False) -> dict[str, Any]:
        """Makes a unary call and returns the response message as a dict; raises RpcError.

        A journaled call gets the next sequence number of the run: its result is journaled, and a run
        resumed after a crash gets it again from the journal instead of calling anything."""
        resp = self._post(f"/{service}/{method}", json.dumps(request).encode(), "application/json", timeout, journal)
        data = resp.read()
        if resp.status != 200:
            raise _error_from(resp.status, data)
        return json.loads(data) if data else {}

    def stream(self, service: str, method: str, request: dict[str, Any], timeout: float | None = None,
               journal: bool = False) -> Iterator[dict[str, Any]]:
        """Makes a server-streaming call and yields each response message; raises RpcError. Journaled as call() is."""
        body = json.dumps(request).encode()
        envelope = b"\x00" + struct.pack(">I", len(body)) + body
        resp = self._post(f"/{service}/{method}", envelope, "application/connect+json", timeout, journal)
        if resp.status != 200:
            raise _error_from(resp.status, resp.read())
        try:
            while True:
                head = resp.read(5)
                if len(head) < 5:
                    raise RpcError("unavailable", "stream ended without an end-of-stream message")
                flags, n = head[0], struct.unpack(">I", head[1:])[0]
                payload = resp.read(n)
                message = json.loads(payload) if payload else {}
                if flags & 0x02:
                    err = message.get("error")
                    if err:
                        raise RpcError(err.get("code", "unknown"), err.get("message", ""))
                    return
                yield message
        finally:
            if not resp.isclosed():
                # An abandoned stream leaves the socket mid-body: drop it rather than reuse it.
                resp.close()
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None


def _error_from(status: int, data: bytes) -> RpcError:
    try:
        body = json.loads(data)
        return RpcError(body.get("code", "unknown"), body.get("message", ""))
    except ValueError:
        return RpcError("unavailable" if status in (502, 503, 504) else "unknown", f"HTTP {status}: {data[:200]!r}")
