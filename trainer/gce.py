"""All GCE knowledge the trainer needs: the metadata server, the platform probe, the watchers.

Lifecycle: ``probe()`` is called once at start; only when a metadata server answers does the
runner start ``NoticeWatcher`` threads (daemon, one per key). Each thread long-polls its key with
``wait_for_change=true&last_etag=<etag>&timeout_sec=N`` (never busy polling), and calls
``on_notice(kind)`` when the value turns to the notice value: ``instance/preempted`` → TRUE
(kind "preempted"), ``instance/maintenance-event`` → TERMINATE_ON_HOST_MAINTENANCE (kind
"maintenance"). Errors back off and retry. ``stop()`` sets an event; the thread exits after its
current request (bounded by the HTTP timeout). SIGTERM is handled by the runner, not here; on a
SIGTERM the runner reads ``stop_evidence()`` to tell a preemption from any other stop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_METADATA_HOST = "metadata.google.internal"
HEADERS = {"Metadata-Flavor": "Google"}
PROBE_TIMEOUT_SECONDS = 1.0
GET_TIMEOUT_SECONDS = 5.0
WAIT_TIMEOUT_SECONDS = 60  # server-side timeout_sec; the HTTP timeout is a bit longer
RETRY_MAX_SECONDS = 10.0
FIRST_ETAG = "0"  # never handed out by the server: the first call answers at once

PREEMPTED_KEY = "instance/preempted"
MAINTENANCE_KEY = "instance/maintenance-event"
MAINTENANCE_TERMINATE = "TERMINATE_ON_HOST_MAINTENANCE"  # the VM will be stopped for it
# (metadata key, value that means "notice", notice kind)
NOTICE_KEYS = (
    (PREEMPTED_KEY, "TRUE", "preempted"),
    (MAINTENANCE_KEY, MAINTENANCE_TERMINATE, "maintenance"),
)


class MetadataError(Exception):
    """The metadata server did not answer usefully."""


def metadata_host() -> str:
    return os.environ.get("GCE_METADATA_HOST") or DEFAULT_METADATA_HOST


def _url(path: str, params: dict[str, str] | None = None) -> str:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return f"http://{metadata_host()}/computeMetadata/v1/{path}{query}"


def metadata_get(
    path: str,
    params: dict[str, str] | None = None,
    timeout_seconds: float = GET_TIMEOUT_SECONDS,
) -> tuple[str, str]:
    """GET a metadata value; returns (text, etag). Raises MetadataError."""
    request = urllib.request.Request(_url(path, params), headers=HEADERS)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as resp:  # noqa: S310
            return resp.read().decode(), resp.headers.get("ETag", "")
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise MetadataError(f"metadata {path}: {error}") from error


def probe(timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True when a metadata server answers GET / with ``Metadata-Flavor: Google``."""
    request = urllib.request.Request(f"http://{metadata_host()}/", headers=HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as resp:  # noqa: S310
            return resp.status == 200 and resp.headers.get("Metadata-Flavor") == "Google"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def holder_name(on_gce: bool) -> str:
    """Instance name when a metadata server answers, else the host name."""
    if on_gce:
        try:
            name, _ = metadata_get("instance/name")
            if name.strip():
                return name.strip()
        except MetadataError as error:
            log.warning("could not read instance/name (%s); using the host name", error)
    return socket.gethostname()


def stop_evidence(timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> tuple[bool | None, bool]:
    """(instance/preempted is TRUE, maintenance-event is TERMINATE_ON_HOST_MAINTENANCE), read
    once when a SIGTERM arrives. Compute Engine sets preempted before its ACPI soft-off, so a
    SIGTERM with preempted FALSE is some other stop (an API stop or delete, a guest power-off).
    The first is None when it cannot be read: then nothing is known. Short timeouts: this runs
    inside the shutdown window, before the notice save."""
    try:
        preempted: bool | None = (
            metadata_get(PREEMPTED_KEY, timeout_seconds=timeout_seconds)[0].strip() == "TRUE"
        )
    except MetadataError as error:
        log.warning("could not read %s (%s); the stop cause is unknown", PREEMPTED_KEY, error)
        preempted = None
    try:
        event = metadata_get(MAINTENANCE_KEY, timeout_seconds=timeout_seconds)[0].strip()
    except MetadataError:
        event = ""
    return preempted, event == MAINTENANCE_TERMINATE


class NoticeWatcher(threading.Thread):
    """Long-polls one metadata key and reports when it turns to ``notice_value``."""

    def __init__(
        self,
        key: str,
        notice_value: str,
        kind: str,
        on_notice: Callable[[str], None],
        wait_timeout_seconds: int = WAIT_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(name=f"watch-{kind}", daemon=True)
        self.key = key
        self.notice_value = notice_value
        self.kind = kind
        self.on_notice = on_notice
        self.wait_timeout_seconds = wait_timeout_seconds
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        etag = FIRST_ETAG
        previous: str | None = None
        backoff_seconds = 0.5
        while not self._stop_event.is_set():
            params = {
                "wait_for_change": "true",
                "last_etag": etag,
                "timeout_sec": str(self.wait_timeout_seconds),
            }
            try:
                value, etag = metadata_get(
                    self.key, params, timeout_seconds=self.wait_timeout_seconds * 1.1 + 5
                )
            except MetadataError as error:
                log.warning("watching %s: %s; retrying in %.1fs", self.key, error, backoff_seconds)
                self._stop_event.wait(backoff_seconds)
                backoff_seconds = min(backoff_seconds * 2, RETRY_MAX_SECONDS)
                etag = FIRST_ETAG
                continue
            backoff_seconds = 0.5
            value = value.strip()
            # Fire on the transition into the notice value (also if it is already set at start).
            if value == self.notice_value and previous != value:
                self.on_notice(self.kind)
            previous = value
            if not etag:
                # A server without ETags cannot long-poll; avoid hammering it.
                self._stop_event.wait(1.0)
                etag = FIRST_ETAG


def start_watchers(on_notice: Callable[[str], None], **kwargs) -> list[NoticeWatcher]:
    watchers = [
        NoticeWatcher(key, value, kind, on_notice, **kwargs) for key, value, kind in NOTICE_KEYS
    ]
    for watcher in watchers:
        watcher.start()
    return watchers
