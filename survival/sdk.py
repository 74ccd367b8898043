"""The google-cloud-compute SDK, imported lazily (so `invoke --list` stays instant), and the one
way the kit waits for a Compute Operation.

We never call ``ExtendedOperation.result()``: it polls compute.googleapis.com whatever the
client's endpoint (docs/gce-behaviour.md, "Waiting on operations from Python"), so on localgce it
would reach for Google. `survival.gce.GoogleCompute` polls through an operations client built
with its own client options instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from survival.errors import ConfigError


def compute_v1() -> Any:
    """``google.cloud.compute_v1``; a one-line error if the pinned dependency is missing."""
    try:
        from google.cloud import compute_v1 as module
    except ImportError as exc:  # pragma: no cover - the dependency is pinned
        raise ConfigError(
            "google-cloud-compute is not installed: run `make setup` (it is a pinned dependency)"
        ) from exc
    return module


def api_exceptions() -> Any:
    """``google.api_core.exceptions`` (NotFound, Conflict, ...)."""
    from google.api_core import exceptions

    return exceptions


def make_client(client_class: Any, **kwargs: Any) -> Any:
    """A compute_v1 client; missing Application Default Credentials become one line that says
    what to run (the client looks them up when it is built, for real GCE)."""
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return client_class(**kwargs)
    except DefaultCredentialsError as exc:
        raise ConfigError(
            "no Google credentials for backend gce: run `gcloud auth application-default login` "
            "(or set GOOGLE_APPLICATION_CREDENTIALS), or use backend local"
        ) from exc


def wait_until_done(
    operation: Any,
    refresh: Callable[[str], Any],
    *,
    poll_seconds: float,
    timeout_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Any | None:
    """Poll ``refresh(operation.name)`` until the Operation is DONE and return it; None if it is
    still not DONE after ``timeout_seconds``. Errors on the Operation are the caller's to read."""
    done = compute_v1().Operation.Status.DONE
    deadline = time.monotonic() + timeout_seconds
    while operation.status != done:
        if time.monotonic() > deadline:
            return None
        sleep(poll_seconds)
        operation = refresh(operation.name)
    return operation
