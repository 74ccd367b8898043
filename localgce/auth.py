"""Who may call the compute endpoint (docs/localgce.md, "Access control").

Inserting an instance runs its startup script as the daemon's user, so the endpoint is not open
to whoever can reach its port:

- `Host` must be `127.0.0.1:PORT` or `localhost:PORT` (403 otherwise): a web page that rebinds a
  DNS name to 127.0.0.1 sends its own name.
- A request body must be `application/json` (415 otherwise): a cross-origin form or `text/plain`
  POST, which browsers send without asking, never is.
- `Authorization: Bearer <token>` (401 in GCE's error JSON without it, or with a wrong one). The
  daemon's token is written at start to `STATE_DIR/token`, mode 0600, in a 0700 state dir.
  A token issued by an instance's metadata server is also accepted, as on GCE, only while it is
  unexpired and only when that VM's scopes cover compute (403 `ACCESS_TOKEN_SCOPE_INSUFFICIENT`
  otherwise); emulator-only endpoints (`/localgce/…`, `…/preempt`) take the daemon's token only.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable
from email.message import Message
from pathlib import Path

from localgce.errors import ApiError
from localgce.httpserver import Request, Response
from localgce.state import Store

TOKEN_FILE = "token"  # noqa: S105 - a file name
GUEST_TOKEN_PREFIX = "ya29.localgce-"  # noqa: S105 - a prefix
COMPUTE_SCOPES = {
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/compute",
}
READ_ONLY_SCOPES = COMPUTE_SCOPES | {
    "https://www.googleapis.com/auth/cloud-platform.read-only",
    "https://www.googleapis.com/auth/compute.readonly",
}
MISSING_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential."
)
INVALID_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential."
)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(state_dir: Path, token: str) -> None:
    """STATE_DIR/token, readable by the daemon's user only (created 0600, never wider)."""
    path = Path(state_dir) / TOKEN_FILE
    tmp = path.with_name(f".{TOKEN_FILE}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)


def read_token(state_dir: Path) -> str | None:
    try:
        return (Path(state_dir) / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def issue_guest_token(store: Store, key, lifetime_seconds: float) -> str:
    """A metadata-server access token for instance `key`, remembered until it expires."""
    token = GUEST_TOKEN_PREFIX + secrets.token_hex(24)
    with store.lock:
        now = store.clock()
        for old in [t for t, (_, exp) in store.guest_tokens.items() if exp <= now]:
            del store.guest_tokens[old]
        store.guest_tokens[token] = (key, now + lifetime_seconds)
    return token


def unauthenticated(message: str, reason: str) -> ApiError:
    err = ApiError(401, reason, message)
    err.status_name = "UNAUTHENTICATED"
    err.location = "Authorization"
    return err


def scope_insufficient(method: str) -> ApiError:
    message = "Request had insufficient authentication scopes."
    err = ApiError(403, "insufficientPermissions", message)
    err.status_name = "PERMISSION_DENIED"
    err.details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "domain": "googleapis.com",
            "metadata": {"service": "compute.googleapis.com", "method": method},
        }
    ]
    return err


def _emulator_only(path: str) -> bool:
    return path.startswith("/localgce/") or path.endswith("/preempt")


class ApiGate:
    """Wraps the compute router: Host, media type and credentials are checked first."""

    def __init__(self, app: Callable[[Request], Response], store: Store, token: str):
        self.app = app
        self.store = store
        self.token = token

    def __call__(self, req: Request) -> Response:
        port = req.local_port
        if req.headers.get("host", "") not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            raise ApiError(403, "forbidden", "Requests must be addressed to 127.0.0.1:PORT.")
        if req.body:
            message = Message()
            message["content-type"] = req.headers.get("content-type", "")
            if message.get_content_type() != "application/json":
                raise ApiError(
                    415, "unsupportedMediaType", "Request bodies must be application/json."
                )
        self._authorize(req)
        return self.app(req)

    def _authorize(self, req: Request) -> None:
        scheme, _, presented = req.headers.get("authorization", "").strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise unauthenticated(MISSING_CREDENTIALS, "required")
        if hmac.compare_digest(presented.encode(), self.token.encode()):
            return
        with self.store.lock:
            entry = self.store.guest_tokens.get(presented)
            if entry is None or entry[1] <= self.store.clock():
                raise unauthenticated(INVALID_CREDENTIALS, "authError")
            rec = self.store.instances.get(entry[0])
            accounts = (rec.resource.get("serviceAccounts") or []) if rec is not None else []
            scopes = {s for sa in accounts for s in sa.get("scopes") or []}
        allowed = READ_ONLY_SCOPES if req.method in ("GET", "HEAD") else COMPUTE_SCOPES
        if _emulator_only(req.path) or not scopes & allowed:
            raise scope_insufficient(f"{req.method} {req.path}")
