"""A small HTTP layer on the stdlib ThreadingHTTPServer: a route table, JSON in and out, GCE errors.

Routes are (method, path pattern, handler); `{name}` in a pattern matches one path segment and is
passed to the handler as a keyword. A path that matches with another method answers 405, an
unknown path 404, both in GCE's error JSON; a handler that crashes answers 500 and is logged.
Servers bind 127.0.0.1 port 0 and `start_server` returns once the socket is listening.
A handler that raises `DropConnection` gets no reply at all: the socket is reset.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import sys
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from localgce.errors import ApiError, method_not_allowed, not_found

LOOPBACK = "127.0.0.1"
log = logging.getLogger("localgce.http")


class DropConnection(Exception):
    """Raised by a handler: close the connection without a reply (a reset, as a network does)."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    local_port: int = 0  # the port the request arrived on (the Host check needs it)

    def json(self) -> dict:
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise ApiError(400, "parseError", f"request body is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ApiError(400, "parseError", "request body must be a JSON object")
        return value


@dataclass
class Response:
    status: int = 200
    body: bytes | dict | list | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


Handler = Callable[..., Response | dict]


class Router:
    def __init__(self, routes: list[tuple[str, str, Handler]]):
        self.routes = [(m, _compile(p), h) for m, p, h in routes]

    def dispatch(self, req: Request) -> Response:
        path_matched = False
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(req.path)
            if not match:
                continue
            path_matched = True
            if method != req.method:
                continue
            params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
            req.params = params
            result = handler(req, **params)
            return result if isinstance(result, Response) else Response(body=result)
        if path_matched:
            raise method_not_allowed(req.method, req.path)
        raise not_found(req.path.lstrip("/"))


def _compile(pattern: str) -> re.Pattern:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
    return re.compile(regex)


def error_response(err: ApiError) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="localgce"'} if err.status == 401 else {}
    return Response(status=err.status, body=err.body(), headers=headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Set per server class by start_server.
    app: Callable[[Request], Response]

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK add
        # ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def _serve(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        req = Request(
            method=self.command,
            path=parsed.path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            local_port=self.server.server_address[1],
        )
        try:
            resp = self.app(req)
        except DropConnection:
            self._reset()
            return
        except ApiError as err:
            resp = error_response(err)
        except Exception:
            log.exception("handler crashed on %s %s", self.command, self.path)
            resp = error_response(ApiError(500, "backendError", "internal error in localgce"))
        try:
            self._write(resp)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (e.g. a guest process killed while it waited for a change).
            self.close_connection = True

    def _reset(self) -> None:
        """Close with an RST (SO_LINGER 0) and nothing written: the client sees a dropped
        connection."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _write(self, resp: Response) -> None:
        payload = resp.body
        if isinstance(payload, dict | list):
            payload = json.dumps(payload).encode()
        elif isinstance(payload, str):
            payload = payload.encode()
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in resp.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many concurrent clients (50-instance benchmark, 30 concurrent lifecycles).
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address, exc)
            return
        log.exception("error serving %s", client_address)


@dataclass
class RunningServer:
    server: LoopbackServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_server(app: Callable[[Request], Response], name: str, port: int = 0) -> RunningServer:
    """Bind 127.0.0.1:`port` (0 = any free port), serve `app` in a thread; listening on return."""
    handler = type(f"{name}Handler", (_Handler,), {"app": staticmethod(app)})
    server = LoopbackServer((LOOPBACK, port), handler)  # binds and listens in the constructor
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return RunningServer(server=server, thread=thread)
