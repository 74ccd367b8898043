"""A filtering proxy in front of fake-gcs-server: object names must not leave its root.

fake-gcs-server's filesystem backend joins object names onto its root directory, so a name such as
`../../x` writes (and reads) files outside it, as whatever user runs the daemon. Every storage
request goes through this proxy first; it answers 400 in Google's JSON error shape, without
forwarding anything, when a bucket or object name has a `..` segment or an object name starts with
`/`. Names are looked for wherever fake-gcs-server reads them: the path (JSON API, `/download/`,
XML-style `/BUCKET/OBJECT`), the `name` query parameter (uploads), and the JSON metadata of upload
and insert/compose bodies (plain JSON or the first part of `multipart/related`). Percent-encoding is
undone repeatedly before checking, so `%2e%2e%2f` and double-encoded forms are caught too.
Everything else is forwarded unchanged, Host header included, so the upload URLs fake-gcs-server
hands out (built on the proxy's URL) keep working.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler

from localgce.errors import ApiError
from localgce.httpserver import LOOPBACK, LoopbackServer, RunningServer

log = logging.getLogger("localgce.storage")
COPY_BLOCK_BYTES = 256 * 1024
UPSTREAM_TIMEOUT_SECONDS = 300.0
# Not forwarded either way: they describe one connection, not the message.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "expect",  # answered by this proxy already (BaseHTTPRequestHandler sends 100 Continue)
}
_BUCKET_OBJECT = re.compile(r"/b/([^/]*)/o/")


def _decoded(value: str) -> str:
    """Undo percent-encoding until nothing changes (a double-encoded `..` is still `..`)."""
    for _ in range(5):
        unquoted = urllib.parse.unquote(value)
        if unquoted == value:
            break
        value = unquoted
    return value


def bad_name(name: str) -> bool:
    """A bucket or object name that would leave fake-gcs-server's root."""
    name = _decoded(name)
    return name.startswith("/") or ".." in name.replace("\\", "/").split("/")


def _body_names(content_type: str, body: bytes) -> list[str]:
    """Names in a JSON metadata body, or in the first part of a multipart/related body.
    Raises ValueError when the metadata cannot be read: such a body is refused, not forwarded."""
    message = Message()
    message["content-type"] = content_type
    kind = message.get_content_type()
    if kind == "multipart/related":
        boundary = message.get_param("boundary")
        if not boundary:
            raise ValueError("multipart body without a boundary")
        delimiter = b"--" + str(boundary).encode()
        parts = body.split(delimiter)
        if len(parts) < 3:
            raise ValueError("multipart body without parts")
        _, sep, metadata = parts[1].partition(b"\r\n\r\n")
        if not sep:
            _, sep, metadata = parts[1].partition(b"\n\n")
        if not sep:
            raise ValueError("multipart metadata part without headers")
        body = metadata
    elif kind != "application/json":
        return []
    if not body.strip():
        return []
    value = json.loads(body)
    names = []
    if isinstance(value, dict):
        for key in ("name", "bucket"):
            if isinstance(value.get(key), str):
                names.append(value[key])
        for source in value.get("sourceObjects") or []:
            if isinstance(source, dict) and isinstance(source.get("name"), str):
                names.append(source["name"])
        destination = value.get("destination")
        if isinstance(destination, dict) and isinstance(destination.get("name"), str):
            names.append(destination["name"])
    return names


def refusal(method: str, target: str, content_type: str, body: bytes) -> str | None:
    """Why this request must not reach fake-gcs-server, or None."""
    parsed = urllib.parse.urlsplit(target)
    path = parsed.path
    if ".." in _decoded(path).replace("\\", "/").split("/"):
        return "Object and bucket names must not contain '..' segments."
    if path.startswith(("/storage/", "/upload/", "/download/")):
        for match in _BUCKET_OBJECT.finditer(path):
            if bad_name(match.group(1)) or _decoded(path[match.end() :]).startswith("/"):
                return "Object names must not start with '/'."
    else:
        # XML-style /BUCKET/OBJECT.
        bucket, _, obj = path.lstrip("/").partition("/")
        if _decoded(obj).startswith("/") or bad_name(bucket):
            return "Object names must not start with '/'."
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    for key in ("name", "destination", "sourceObject"):
        if any(bad_name(v) for v in query.get(key, [])):
            return f"The {key!r} parameter is not a valid object name."
    if method in ("POST", "PUT", "PATCH") and body and "upload_id" not in query:
        try:
            names = _body_names(content_type, body)
        except (ValueError, UnicodeDecodeError) as exc:
            return f"Could not read the object metadata in the request body: {exc}"
        if any(bad_name(n) for n in names):
            return "Object names must not contain '..' segments or start with '/'."
    return None


@dataclass
class Upstream:
    """Where fake-gcs-server listens; set before it starts (its port is picked per attempt)."""

    port: int = 0


class _GuardHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: Upstream  # set per server by start_guard
    _conn: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        super().finish()
        if self._conn is not None:
            self._conn.close()

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _refuse(self, message: str) -> None:
        payload = json.dumps(ApiError(400, "invalid", message).body()).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes) -> http.client.HTTPResponse:
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    LOOPBACK, self.upstream.port, timeout=UPSTREAM_TIMEOUT_SECONDS
                )
            try:
                self._conn.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for key, value in headers:
                    self._conn.putheader(key, value)
                self._conn.endheaders(body or None)
                return self._conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # fake-gcs-server closed an idle kept-alive connection: open a new one, once.
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _serve(self) -> None:
        body = self._read_body()
        reason = refusal(self.command, self.path, self.headers.get("Content-Type", ""), body)
        if reason is not None:
            log.warning("refused %s %s: %s", self.command, self.path, reason)
            self._refuse(reason)
            return
        try:
            resp = self._forward(body)
        except OSError as exc:
            log.warning("fake-gcs-server did not answer %s %s: %s", self.command, self.path, exc)
            self.close_connection = True
            payload = json.dumps(ApiError(502, "backendError", "storage is unavailable").body())
            self.send_response(502)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload.encode())
            return
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        length = resp.getheader("Content-Length")
        if no_body:
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            resp.read()
        elif length is not None:
            self.send_header("Content-Length", length)
            self.end_headers()
            while block := resp.read(COPY_BLOCK_BYTES):
                self.wfile.write(block)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while block := resp.read1(COPY_BLOCK_BYTES):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")
        if resp.will_close:
            self._conn.close()
            self._conn = None

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


def start_guard(upstream: Upstream) -> RunningServer:
    """Listen on 127.0.0.1 (any free port) and forward what `refusal` lets through."""
    handler = type("StorageGuardHandler", (_GuardHandler,), {"upstream": upstream})
    server = LoopbackServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="storage-guard", daemon=True)
    thread.start()
    return RunningServer(server=server, thread=thread)
