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

The proxy also plays Cloud Storage's IAM, which fake-gcs-server lacks, from a `WritePolicy` it reads
on every request (the daemon's reads the `storage_denied_buckets` knob, so a change through the
admin endpoint counts from the next request). Object writes to a denied bucket (uploads, inserts,
compose and copy/rewrite into it, patches, deletes; JSON and XML style) answer GCS's 403
`forbidden`, naming the caller and the permission; reads stay allowed. It answers
`GET /storage/v1/b/BUCKET/iam/testPermissions` itself: every asked permission for an allowed
bucket, only the read permissions for a denied one, 404 for a bucket that does not exist
(docs/gce-behaviour.md, "Bucket permissions: testIamPermissions and 403").
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from localgce.errors import ApiError
from localgce.httpserver import LOOPBACK, LoopbackServer, RunningServer

if TYPE_CHECKING:
    from localgce.state import Store

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


ANONYMOUS_CALLER = "Anonymous caller"
# What a denied bucket still grants: reading its objects and the bucket.
READ_PERMISSIONS = frozenset({"storage.objects.get", "storage.objects.list", "storage.buckets.get"})
_TEST_PERMISSIONS = re.compile(r"^/storage/v1/b/([^/]+)/iam/testPermissions/?$")
_JSON_OBJECTS = re.compile(r"^/storage/v1/b/([^/]+)/o(?:/(.*))?$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o/?$")
_COPY = re.compile(r"/(?:copyTo|rewriteTo)/b/([^/]+)/o/")
_WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class WritePolicy:
    """Who may write where. `denied_buckets()` is asked on every request (a knob that changes
    counts at once); `caller(authorization)` names the principal in a 403 message."""

    denied_buckets: Callable[[], Collection[str]] = field(default=lambda: ())
    caller: Callable[[str], str] = field(default=lambda authorization: ANONYMOUS_CALLER)


def store_policy(store: Store) -> WritePolicy:
    """The daemon's policy: the `storage_denied_buckets` knob; the caller is the service account
    of the instance whose metadata-server token the request carries, else anonymous (localgce's
    workstation clients send no credentials to storage)."""

    def caller(authorization: str) -> str:
        token = authorization.removeprefix("Bearer ").strip()
        with store.lock:
            entry = store.guest_tokens.get(token) if token else None
            rec = store.instances.get(entry[0]) if entry else None
            if rec is None:
                return ANONYMOUS_CALLER
            accounts = rec.resource.get("serviceAccounts") or []
            email = accounts[0].get("email") if accounts else None
            if not email or email == "default":
                project = store.projects.get(entry[0].project) or {}
                email = project.get("defaultServiceAccount") or ANONYMOUS_CALLER
        return email

    # The knob's list is replaced on update, never changed in place: no lock to read it.
    return WritePolicy(denied_buckets=lambda: store.knobs.storage_denied_buckets, caller=caller)


def object_write(method: str, target: str) -> tuple[str, str] | None:
    """(bucket, permission) when the request writes an object, else None."""
    if method not in _WRITE_VERBS:
        return None
    path = urllib.parse.urlsplit(target).path
    if match := _UPLOAD.match(path):
        return _decoded(match.group(1)), "storage.objects.create"
    if match := _JSON_OBJECTS.match(path):
        bucket, rest = _decoded(match.group(1)), match.group(2)
        if copy := _COPY.search(path):
            return _decoded(copy.group(1)), "storage.objects.create"
        if not rest or rest.endswith("/compose") or method == "POST":
            return bucket, "storage.objects.create"
        if method == "DELETE":
            return bucket, "storage.objects.delete"
        return bucket, "storage.objects.update"
    if path.startswith(("/storage/", "/upload/", "/download/", "/batch/")):
        return None  # bucket-level calls, and the batch endpoint, are not object writes here
    bucket, _, obj = path.lstrip("/").partition("/")
    if not bucket:
        return None
    bucket = _decoded(bucket)
    if method == "DELETE" and obj:
        return bucket, "storage.objects.delete"
    if obj or method in ("POST", "PUT"):  # XML API: PUT /B/O, POST /B (form upload)
        return bucket, "storage.objects.create"
    return None


def forbidden(caller: str, permission: str) -> ApiError:
    """GCS's 403 for a permission the caller lacks on an object."""
    return ApiError(
        403,
        "forbidden",
        f"{caller} does not have {permission} access to the Google Cloud Storage object. "
        f"Permission '{permission}' denied on resource (or it may not exist).",
    )


@dataclass
class Upstream:
    """Where fake-gcs-server listens; set before it starts (its port is picked per attempt)."""

    port: int = 0


class _GuardHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: Upstream  # set per server by start_guard
    policy: WritePolicy  # set per server by start_guard
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
        self._answer(400, ApiError(400, "invalid", message).body())

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _bucket_exists(self, bucket: str) -> bool:
        """Asked of fake-gcs-server on a connection of its own (the kept-alive one may be busy
        with nothing, but a fresh one keeps this independent of it)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.upstream.port, timeout=30)
        try:
            conn.request("GET", f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}")
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        finally:
            conn.close()

    def _test_permissions(self, bucket: str) -> None:
        """buckets.testIamPermissions: the asked permissions this policy grants."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        asked = query.get("permissions", [])
        if not asked:
            self._answer(400, ApiError(400, "required", "Required parameter: permissions").body())
            return
        try:
            exists = self._bucket_exists(bucket)
        except OSError as exc:
            log.warning("fake-gcs-server did not answer for bucket %s: %s", bucket, exc)
            self._answer(502, ApiError(502, "backendError", "storage is unavailable").body())
            return
        if not exists:
            self._answer(
                404, ApiError(404, "notFound", "The specified bucket does not exist.").body()
            )
            return
        denied = bucket in self.policy.denied_buckets()
        granted = [
            p for p in asked if p.startswith("storage.") and (not denied or p in READ_PERMISSIONS)
        ]
        self._answer(200, {"kind": "storage#testIamPermissionsResponse", "permissions": granted})

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
        write = object_write(self.command, self.path)
        if write is not None and write[0] in self.policy.denied_buckets():
            bucket, permission = write
            caller = self.policy.caller(self.headers.get("Authorization", ""))
            log.info("denied %s %s: %s on bucket %s", self.command, self.path, permission, bucket)
            self._answer(403, forbidden(caller, permission).body())
            return
        path = urllib.parse.urlsplit(self.path).path
        if self.command == "GET" and (match := _TEST_PERMISSIONS.match(path)):
            self._test_permissions(_decoded(match.group(1)))
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


def start_guard(upstream: Upstream, policy: WritePolicy | None = None) -> RunningServer:
    """Listen on 127.0.0.1 (any free port) and forward what `refusal` and `policy` (default:
    every bucket writable) let through."""
    handler = type(
        "StorageGuardHandler",
        (_GuardHandler,),
        {"upstream": upstream, "policy": policy or WritePolicy()},
    )
    server = LoopbackServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="storage-guard", daemon=True)
    thread.start()
    return RunningServer(server=server, thread=thread)
