"""A tiny GCE metadata server on 127.0.0.1:0 honouring wait_for_change, last_etag, timeout_sec."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/computeMetadata/v1/"
MAX_WAIT_SECONDS = 3600


def etag(value: str) -> str:
    return hashlib.md5(value.encode()).hexdigest()[-16:]  # noqa: S324 - an ETag, not security


class FakeMetadataServer:
    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = {
            "instance/name": "test-vm",
            "instance/preempted": "FALSE",
            "instance/maintenance-event": "NONE",
            **(values or {}),
        }
        self.changed = threading.Condition()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: str, tag: str | None = None) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", "application/text")
                if tag:
                    self.send_header("ETag", tag)
                self.send_header("Content-Length", str(len(data)))
                # A client that went away (a killed trainer's watcher) is not an error.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.end_headers()
                    self.wfile.write(data)

            def do_GET(self):
                if self.headers.get("Metadata-Flavor") != "Google":
                    self._send(403, "Missing Metadata-Flavor:Google header.")
                    return
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                server.requests.append(self.path)
                if url.path == "/":
                    self._send(200, "computeMetadata/\n")
                    return
                key = url.path.removeprefix(PREFIX)
                with server.changed:
                    if key not in server.values:
                        self._send(404, "not found")
                        return
                    if query.get("wait_for_change") in ("true", "1", "yes", "on"):
                        timeout = float(query.get("timeout_sec", MAX_WAIT_SECONDS))
                        last = query.get("last_etag")
                        server.changed.wait_for(
                            lambda: last != etag(server.values[key]), timeout=timeout
                        )
                    value = server.values[key]
                self._send(200, value, etag(value))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        with self.changed:
            self.changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def set(self, key: str, value: str) -> None:
        with self.changed:
            self.values[key] = value
            self.changed.notify_all()
