"""A fault-injecting HTTP proxy on loopback, in front of fake-gcs-server.

Point STORAGE_EMULATOR_HOST at ``proxy.url``: every request is forwarded to the upstream server
and its reply relayed, except that a request matching an armed fault is forwarded, its reply
read, and then the client's connection is closed without a reply. The write landed; the client
cannot know, and retries. That is what a reply lost on the network looks like.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Match = Callable[[str, str, bytes], bool]  # (method, path, body) → drop this reply?
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer"}


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self._lock = threading.Lock()
        self._faults: list[Match] = []
        self.dropped: list[tuple[str, str]] = []
        self.seen: list[tuple[str, str, bytes]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    reply = upstream.getresponse()
                    data = reply.read()
                finally:
                    upstream.close()
                if proxy._take_fault(self.command, self.path, body):
                    self.close_connection = True  # the reply is lost: close without a byte
                    return
                self.send_response(reply.status, reply.reason)
                for key, value in reply.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _take_fault(self, method: str, path: str, body: bytes) -> bool:
        with self._lock:
            self.seen.append((method, path, body))
            for index, match in enumerate(self._faults):
                if match(method, path, body):
                    del self._faults[index]
                    self.dropped.append((method, path))
                    return True
        return False

    def drop_reply_once(self, match: Match) -> None:
        """Forward the next request that matches, then lose its reply."""
        with self._lock:
            self._faults.append(match)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
