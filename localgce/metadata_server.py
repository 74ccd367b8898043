"""One instance's metadata server (`/computeMetadata/v1/`), with GCE's rules
(docs/gce-behaviour.md, "Metadata server").

- `Metadata-Flavor: Google` (exactly that value) is required (403 with GCE's HTML text
  otherwise) and returned;
  any request with X-Forwarded-For is refused (403).
- Paths ending in `/` are directory listings; `?recursive=true` answers the subtree as JSON with
  camelCase keys (user-controlled keys such as attributes keep their spelling); `alt=json|text`.
- `wait_for_change=true` with `last_etag`/`timeout_sec` holds the request until the answer's ETag
  changes (woken by Store.changed), 400 on a plain directory listing and on the token URL.
- Emulator-only: `POST /localgce/v1/guest/shutdown?action=poweroff|reboot`, used by the guest's
  shutdown shims (guest.py) to run the guest-initiated shutdown path. It needs this boot's secret
  in `X-Localgce-Shutdown-Secret`; only the shims (mode 0700) hold it, so no other local process
  can power the VM off.
- Tokens from `service-accounts/…/token` are remembered with their instance: the compute endpoint
  accepts them when the VM's scopes allow (auth.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable

from localgce.auth import GUEST_TOKEN_PREFIX, issue_guest_token
from localgce.config import camel
from localgce.errors import ApiError
from localgce.httpserver import Request, Response
from localgce.instance_resource import DEFAULT_SCOPES, is_spot, metadata_dict
from localgce.state import InstanceKey, Store

ROOT = "/computeMetadata/v1"
TRUE_VALUES = {"true", "1", "yes", "on"}
# No timeout_sec: hold at most this long (the real server has a cap too).
MAX_WAIT_SECONDS = 3600.0
TOKEN_LIFETIME_SECONDS = 3599
FORBIDDEN_HTML = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 403 (Forbidden)!!1</title>\n"
    "  <p><b>403.</b> <ins>That's an error.</ins>\n"
    "  <p>Your client does not have permission to get URL <code>{path}</code> from this server. "
    "Missing Metadata-Flavor:Google header. <ins>That's all we know.</ins>\n"
)


class UserMap(dict):
    """A map whose keys the user chose (attributes, emails): not camel-cased in JSON."""


class Indexed(dict):
    """`0/`, `1/`, ... children that JSON renders as an array (disks, network-interfaces)."""


class TextList(list):
    """A leaf that is one item per line as text (scopes), a JSON array with alt=json."""


class JsonLeaf(list):
    """A leaf whose default format is JSON (tags)."""


class Dynamic:
    """A leaf computed per request and left out of recursive answers (token, identity)."""

    def __init__(self, name: str):
        self.name = name


def to_json(node, user_keys: bool = False):
    if isinstance(node, Indexed):
        return [to_json(node[k]) for k in sorted(node, key=int)]
    if isinstance(node, dict):
        keep = isinstance(node, UserMap)
        return {
            (k if keep else camel(k, sep="-")): to_json(v)
            for k, v in node.items()
            if not isinstance(v, Dynamic)
        }
    if isinstance(node, list):
        return list(node)
    return node


def to_text_lines(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        lines = []
        for key, value in node.items():
            if not isinstance(value, Dynamic):
                lines.extend(
                    to_text_lines(
                        value, f"{prefix}{key}/" if isinstance(value, dict) else f"{prefix}{key}"
                    )
                )
        return lines
    if isinstance(node, list):
        return [f"{prefix} {json.dumps(list(node))}"]
    return [f"{prefix} {node}"]


def etag_of(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()[-16:]


class MetadataServer:
    """The app behind one instance's metadata port. `tree()` is called with the store lock held."""

    def __init__(
        self,
        store: Store,
        tree: Callable[[], dict],
        guest_shutdown: Callable[[str], None],
        max_wait_seconds: float = MAX_WAIT_SECONDS,
        *,
        key: InstanceKey | None = None,
        shutdown_secret: str = "",
    ):
        self.store = store
        self.tree = tree
        self.guest_shutdown = guest_shutdown
        self.max_wait_seconds = max_wait_seconds
        self.key = key  # whose tokens these are; None: tokens the compute API never accepts
        self.shutdown_secret = shutdown_secret  # "": guest shutdown refused
        self.closed = False

    def close(self) -> None:
        """The instance powered off: release held wait_for_change requests."""
        with self.store.lock:
            self.closed = True
            self.store.changed.notify_all()

    def __call__(self, req: Request) -> Response:
        if "x-forwarded-for" in req.headers:
            return self._forbidden(req, "Request with X-Forwarded-For header is not allowed.\n")
        # Exactly the documented value: google-auth sends "Google", and nothing published says
        # the real server accepts another spelling (docs/gce-behaviour.md, "Metadata server").
        if req.headers.get("metadata-flavor", "").strip() != "Google":
            return self._forbidden(req, FORBIDDEN_HTML.format(path=req.path), "text/html")
        try:
            if req.path == "/localgce/v1/guest/shutdown":
                return self._guest_shutdown(req)
            if req.method not in ("GET", "HEAD"):
                return self._reply(405, f"Method {req.method} not allowed.\n")
            return self._get(req)
        except ApiError as err:
            return self._reply(err.status, err.message + "\n")

    # --- plumbing ------------------------------------------------------------------------
    @staticmethod
    def _reply(
        status: int,
        body: bytes | str,
        content_type: str = "application/text",
        etag: str | None = None,
    ) -> Response:
        payload = body.encode() if isinstance(body, str) else body
        headers = {
            "Metadata-Flavor": "Google",
            "Server": "Metadata Server for VM",
            "X-XSS-Protection": "0",
            "X-Frame-Options": "SAMEORIGIN",
        }
        if etag:
            headers["ETag"] = etag
        return Response(status=status, body=payload, headers=headers, content_type=content_type)

    def _forbidden(
        self, req: Request, text: str, content_type: str = "application/text"
    ) -> Response:
        return self._reply(403, text, content_type)

    def _guest_shutdown(self, req: Request) -> Response:
        if req.method != "POST":
            return self._reply(405, "use POST\n")
        presented = req.headers.get("x-localgce-shutdown-secret", "")
        if not self.shutdown_secret or not hmac.compare_digest(
            presented.encode(), self.shutdown_secret.encode()
        ):
            return self._reply(403, "only this instance's shutdown shims may shut it down\n")
        action = req.query.get("action", "poweroff")
        if action not in ("poweroff", "reboot"):
            return self._reply(400, "action must be poweroff or reboot\n")
        self.guest_shutdown(action)
        return self._reply(200, f"{action} accepted\n")

    # --- GET --------------------------------------------------------------------------------
    def _get(self, req: Request) -> Response:
        path = req.path
        if path in ("/", ""):
            return self._reply(200, "computeMetadata/\n")
        if path.rstrip("/") == "/computeMetadata":
            return self._reply(200, "v1/\n")
        if not (path == ROOT or path.startswith(ROOT + "/")):
            return self._reply(404, "Not Found\n", "text/html")
        rel = path[len(ROOT) :].lstrip("/")
        wants_dir = rel == "" or rel.endswith("/")
        segments = [s for s in rel.split("/") if s]
        query = req.query
        recursive = query.get("recursive", "").lower() in TRUE_VALUES
        waiting = query.get("wait_for_change", "").lower() in TRUE_VALUES
        alt = query.get("alt", "")
        if alt not in ("", "json", "text"):
            return self._reply(400, "alt must be json or text\n")

        with self.store.lock:
            node = self._lookup(segments)
        if isinstance(node, Dynamic):
            if wants_dir:
                return self._reply(404, "Not Found\n", "text/html")
            if waiting:
                return self._reply(400, "wait_for_change is not supported for this path\n")
            return self._dynamic(node, query)
        is_dir = isinstance(node, dict)
        if wants_dir and not is_dir:
            return self._reply(404, "Not Found\n", "text/html")
        if waiting and is_dir and not recursive:
            return self._reply(
                400, "Non-recursive wait_for_change is not supported on directories.\n"
            )

        timeout_seconds = self.max_wait_seconds
        if "timeout_sec" in query:
            try:
                timeout_seconds = min(float(int(query["timeout_sec"])), self.max_wait_seconds)
            except ValueError:
                return self._reply(400, "timeout_sec must be an integer\n")
        deadline = time.monotonic() + timeout_seconds
        with self.store.lock:
            body, content_type, etag = self._render(segments, is_dir, recursive, alt)
            if waiting and query.get("last_etag", etag) == etag:
                while not self.closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.store.changed.wait(remaining)
                    body, content_type, new_etag = self._render(segments, is_dir, recursive, alt)
                    if new_etag != etag:
                        etag = new_etag
                        break
        return self._reply(200, body, content_type, etag)

    def _lookup(self, segments: list[str]):
        node = self.tree()
        for seg in segments:
            if not isinstance(node, dict) or seg not in node:
                raise ApiError(404, "notFound", "Not Found")
            node = node[seg]
        return node

    def _render(self, segments, is_dir, recursive, alt) -> tuple[bytes, str, str]:
        """Body in the requested format; the ETag hashes the default format (see
        docs/gce-behaviour.md, "Metadata server")."""
        node = self._lookup(segments)  # may have changed (or vanished) while we waited
        if is_dir and recursive:
            default = json.dumps(to_json(node)).encode()
            if alt == "text":
                return (
                    ("\n".join(to_text_lines(node)) + "\n").encode(),
                    "application/text",
                    etag_of(default),
                )
            return default, "application/json", etag_of(default)
        if is_dir:
            names = [f"{k}/" if isinstance(v, dict) else k for k, v in node.items()]
            return (
                ("\n".join(names) + "\n").encode(),
                "application/text",
                etag_of("\n".join(names).encode()),
            )
        if isinstance(node, JsonLeaf):
            default = json.dumps(list(node)).encode()
            if alt == "text":
                return "\n".join(node).encode(), "application/text", etag_of(default)
            return default, "application/json", etag_of(default)
        text = "\n".join(node) if isinstance(node, list) else str(node)
        default = text.encode()
        if alt == "json":
            value = list(node) if isinstance(node, list) else node
            return json.dumps(value).encode(), "application/json", etag_of(default)
        return default, "application/text", etag_of(default)

    def _dynamic(self, node: Dynamic, query: dict) -> Response:
        if node.name == "token":
            if query.get("enforce_scopes", "true").lower() in ("false", "0"):
                return self._reply(400, "enforce_scopes must be true when given\n")
            if self.key is not None:
                token = issue_guest_token(self.store, self.key, TOKEN_LIFETIME_SECONDS)
            else:
                token = GUEST_TOKEN_PREFIX + secrets.token_hex(24)
            body = {
                "access_token": token,
                "expires_in": TOKEN_LIFETIME_SECONDS,
                "token_type": "Bearer",
            }
            return self._reply(200, json.dumps(body), "application/json")
        audience = query.get("audience")
        if not audience:
            return self._reply(400, "audience parameter is required\n")
        now = int(self.store.clock())
        claims = {
            "aud": audience,
            "iss": "https://accounts.google.com",
            "iat": now,
            "exp": now + 3600,
        }
        parts = [{"alg": "none", "typ": "JWT"}, claims]
        token = ".".join(
            base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=") for p in parts
        )
        return self._reply(200, token + ".")


def _network_interface(res: dict, number: str, nat_ip: str) -> dict:
    """nic0 as the guest sees it: its network, subnetwork, and access configs only with an
    external IP (the metadata server names networks by project number)."""
    nic = (res.get("networkInterfaces") or [{}])[0]
    network = nic.get("network", "default").rsplit("/", 1)[-1]
    out: dict = {"ip": "127.0.0.1", "network": f"projects/{number}/networks/{network}"}
    if nic.get("subnetwork"):
        region, subnet = nic["subnetwork"].split("/regions/", 1)[-1].split("/subnetworks/")
        out["subnetwork"] = f"projects/{number}/regions/{region}/subnetworks/{subnet}"
    if nic.get("accessConfigs"):
        out["access-configs"] = Indexed({"0": {"external-ip": nat_ip, "type": "ONE_TO_ONE_NAT"}})
    return out


def build_tree(store: Store, key: InstanceKey) -> dict:
    """The metadata tree of one instance, from the store (call with the lock held)."""
    rec = store.instances.get(key)
    if rec is None:
        raise ApiError(404, "notFound", "Not Found")
    res, guest = rec.resource, rec.guest
    project_name, zone, name = key
    project = store.project(project_name)
    number = project["id"]
    sched = res.get("scheduling", {})
    machine_type = res["machineType"].rsplit("/", 1)[-1]
    accounts = UserMap()
    for sa in res.get("serviceAccounts") or [{"email": project["defaultServiceAccount"]}]:
        entry = {
            "aliases": TextList(["default"]),
            "email": sa["email"],
            "identity": Dynamic("identity"),
            "scopes": TextList(sa.get("scopes") or DEFAULT_SCOPES),
            "token": Dynamic("token"),
        }
        accounts["default"] = entry
        accounts[sa["email"]] = entry
        break  # GCE allows one service account per VM
    nat_ip = "127.0.0.1"
    return {
        "instance": {
            "attributes": UserMap(metadata_dict(res.get("metadata", {}))),
            "cpu-platform": "localgce",
            "description": res.get("description", ""),
            "disks": Indexed(
                {
                    "0": {
                        "device-name": "persistent-disk-0",
                        "index": 0,
                        "mode": "READ_WRITE",
                        "type": "PERSISTENT",
                    }
                }
            ),
            "hostname": f"{name}.{zone}.c.{project_name}.internal",
            "id": int(res["id"]),
            "image": guest.get("imagePath", ""),
            "machine-type": f"projects/{number}/machineTypes/{machine_type}",
            "maintenance-event": guest.get("maintenanceEvent", "NONE"),
            "name": name,
            "network-interfaces": Indexed({"0": _network_interface(res, number, nat_ip)}),
            "preempted": "TRUE" if guest.get("preempted") else "FALSE",
            "scheduling": {
                "automatic-restart": "TRUE" if sched.get("automaticRestart") else "FALSE",
                "on-host-maintenance": sched.get("onHostMaintenance", "MIGRATE"),
                "preemptible": "TRUE" if is_spot(res) else "FALSE",
                "provisioning-model": sched.get("provisioningModel", "STANDARD"),
            },
            "service-accounts": accounts,
            "tags": JsonLeaf((res.get("tags") or {}).get("items", [])),
            "zone": f"projects/{number}/zones/{zone}",
        },
        "project": {
            "attributes": UserMap(metadata_dict(project["commonInstanceMetadata"])),
            "numeric-project-id": int(number),
            "project-id": project_name,
        },
        "universe": {"universe-domain": "googleapis.com"},
    }
