"""What the kit (and tests) use to reach localgce: endpoints and google-cloud-compute options.

    endpoints = ensure_running(".localgce", grace_spot_seconds=2)
    instances = compute_v1.InstancesClient(**compute_client_options(endpoints))

Only the standard library is imported here; google-auth is imported lazily for the credentials.

Every call to the compute endpoint carries `Authorization: Bearer <token>`; the token is in
STATE_DIR/token (0600), next to endpoints["git"] (docs/localgce.md, "Access control").
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from localgce import daemon
from localgce.config import knobs_json

DEFAULT_STATE_DIR = ".localgce"


class NotRunning(RuntimeError):
    """No daemon serves that state dir."""


def load_endpoints(state_dir: str | Path = DEFAULT_STATE_DIR) -> dict:
    """{"compute", "storage", "pid", "git"} of the running daemon; NotRunning says what to do."""
    endpoints = daemon.status(Path(state_dir))
    if endpoints is None:
        raise NotRunning(
            f"localgce is not running for {state_dir}; start it with "
            f"`invoke localgce.start` or `python -m localgce start --state-dir {state_dir}`"
        )
    return endpoints


def ensure_running(
    state_dir: str | Path = DEFAULT_STATE_DIR, ssh_enabled: bool = True, **knobs
) -> dict:
    """Start the daemon unless it runs; apply `knobs` (snake_case, see config.Knobs) either way."""
    endpoints = daemon.status(Path(state_dir))
    if endpoints is None:
        return daemon.start(Path(state_dir), knobs=knobs, ssh_enabled=ssh_enabled)
    if knobs:
        set_config(endpoints, **knobs)
    return endpoints


def api_token(endpoints: dict) -> str:
    """The daemon's API token: endpoints["token"] if given, else STATE_DIR/token."""
    if endpoints.get("token"):
        return endpoints["token"]
    token = daemon.read_token(Path(endpoints["git"]).parent)
    if token is None:
        raise NotRunning(f"no localgce API token next to {endpoints['git']}")
    return token


def extension_headers(endpoints: dict) -> dict[str, str]:
    """Headers for a direct HTTP call to the compute endpoint (the emulator-only extensions)."""
    return {"Authorization": f"Bearer {api_token(endpoints)}"}


def set_config(endpoints: dict, **knobs) -> dict:
    """POST /localgce/v1/config with snake_case knobs; returns the knobs now in force."""
    body = json.dumps(knobs_json(knobs)).encode()
    request = urllib.request.Request(  # noqa: S310 - our own loopback URL
        f"{endpoints['compute']}/localgce/v1/config",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **extension_headers(endpoints)},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
        return json.load(resp)


def compute_client_options(endpoints: dict) -> dict:
    """Keyword arguments for any google.cloud.compute_v1 client: REST, our endpoint, and
    credentials that send the daemon's token (they never expire, so they never refresh)."""
    from google.oauth2.credentials import Credentials

    return {
        "credentials": Credentials(api_token(endpoints)),
        "client_options": {"api_endpoint": endpoints["compute"]},
        "transport": "rest",
    }


def batch_client_options(endpoints: dict) -> dict:
    """Keyword arguments for google.cloud.batch_v1.BatchServiceClient: REST, localgce's Batch
    endpoint (endpoints["batch"]; the compute URL for a daemon that predates it) and the same
    token credentials as compute_client_options."""
    from google.oauth2.credentials import Credentials

    return {
        "credentials": Credentials(api_token(endpoints)),
        "client_options": {"api_endpoint": endpoints.get("batch") or endpoints["compute"]},
        "transport": "rest",
    }
