"""What the kit (and tests) use to reach localgce: endpoints and google-cloud-compute options.

    endpoints = ensure_running(".localgce", grace_spot_seconds=2)
    instances = compute_v1.InstancesClient(**compute_client_options(endpoints))

Only the standard library is imported here; google-auth is imported lazily for the credentials.
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


def set_config(endpoints: dict, **knobs) -> dict:
    """POST /localgce/v1/config with snake_case knobs; returns the knobs now in force."""
    body = json.dumps(knobs_json(knobs)).encode()
    request = urllib.request.Request(  # noqa: S310 - our own loopback URL
        f"{endpoints['compute']}/localgce/v1/config",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
        return json.load(resp)


def compute_client_options(endpoints: dict) -> dict:
    """Keyword arguments for any google.cloud.compute_v1 client: REST, anonymous, our endpoint."""
    from google.auth.credentials import AnonymousCredentials

    return {
        "credentials": AnonymousCredentials(),
        "client_options": {"api_endpoint": endpoints["compute"]},
        "transport": "rest",
    }
