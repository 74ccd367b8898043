"""The google-cloud-compute SDK, imported lazily (so `invoke --list` stays instant).

We never call ``ExtendedOperation.result()``: it polls compute.googleapis.com whatever the
client's endpoint (docs/gce-behaviour.md, "Waiting on operations from Python"), so on localgce it
would reach for Google. `survival.gce.GoogleCompute` waits through an operations client built
with its own client options instead (`GoogleCompute._wait`).
"""

from __future__ import annotations

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
