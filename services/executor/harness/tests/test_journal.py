"""The sequence numbers ctx calls carry for the journal (Shaker-Call-Seq), against a real HTTP server."""
from __future__ import annotations

import json
import os
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shaker.context import Channel, WorkflowContext
from shaker.rpc import RpcClient


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Recorder.seen.append((self.path.rsplit("/", 1)[-1], self.headers.get("Shaker-Call-Seq")))
        answers = {"ChatCompletion": {"completion": {"choices": [{"message": {"content": "hi"}}]}},
                   "GetRecords": {"records": []}, "Fetch": {"status": 200, "body": ""},
                   "GetAccessory": {"accessory": {"content": {"a": 1}}}}
        body = json.dumps(answers.get(self.path.rsplit("/", 1)[-1], {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class CallSeqTest(unittest.TestCase):
    def setUp(self) -> None:
        _Recorder.seen = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        _, w = os.pipe()
        self.ctx = WorkflowContext({"run_id": "run", "run_attempt": 2}, Channel(w), RpcClient(url, "t"))

    def tearDown(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def test_numbers_the_calls_that_reach_the_platform_in_order(self) -> None:
        self.ctx.chat.completions.create(messages=[{"role": "user", "content": "x"}])
        self.ctx.datastore.get("notes", "a")
        self.ctx.load_accessory("plan")  # not journaled: a version's accessory is the same on every attempt
        self.ctx.http.get("https://example.com/")
        self.assertEqual(_Recorder.seen, [("ChatCompletion", "0"), ("GetRecords", "1"), ("GetAccessory", None), ("Fetch", "2")])

    def test_tells_the_script_its_attempt(self) -> None:
        self.assertEqual(self.ctx.run_attempt, 2)
        _, w = os.pipe()
        self.assertEqual(WorkflowContext({}, Channel(w), RpcClient("unix:/x", "t")).run_attempt, 1)


if __name__ == "__main__":
    unittest.main()
