"""Error taxonomy: what the orchestrator retries, and how. Every error the kit raises on purpose is
a `SurvivalError`; `survival.cli.user_errors` turns one into a one-line message and exit status 1.

- ConfigError: the user's input or settings are wrong. Never retried; the message says what to do.
  ChaosError: --chaos asks for more preemptions than the run has steps for.
- ImageError, BakeError: an image operation or a Packer bake failed; the message says what next.
- CapacityError: the zone has no capacity for this shape (ZONE_RESOURCE_POOL_EXHAUSTED, stockouts,
  quota). Retried in the next zone of ``survival.zones``.
- TransientError: a server hiccup (5xx, timeouts, rate limits). Retried as is, with backoff.
  NoCapacityError: no zone had capacity; the supervisor waits and tries the zones again.
- JobFailed: the job dir says FAILED, or the supervisor gave up.
Anything else is a bug or an unknown cloud error: it propagates with its traceback.
"""

from __future__ import annotations


class SurvivalError(Exception):
    """Base of the orchestrator's own errors."""


class ConfigError(SurvivalError):
    """Bad settings or arguments. The message is one line that says what to do."""


class ChaosError(ConfigError):
    """--chaos cannot be planned for this run (too few steps for the preemptions asked)."""


class ImageError(SurvivalError):
    """An image operation failed (missing image, name taken, API rejection) with what to do."""


class BakeError(SurvivalError):
    """A bake failed or cannot start: the message says what went wrong and what to do next."""


class CapacityError(SurvivalError):
    """No capacity (or quota) for this instance shape in this zone: try the next zone."""

    def __init__(self, zone: str, code: str, message: str) -> None:
        super().__init__(f"{zone}: {code}: {message}")
        self.zone = zone
        self.code = code


class TransientError(SurvivalError):
    """A transient API failure: retry the same call after a pause."""


class NoCapacityError(TransientError):
    """Every zone tried was out of capacity. A launch reports it; the supervisor backs off and
    tries the zones again, since capacity comes back."""


class JobFailed(SurvivalError):
    """The job dir has a FAILED marker, or the supervisor gave up."""


class SshUnreachable(SurvivalError):
    """The instance's sshd cannot be reached; `invoke ssh-logs` falls back to the serial console."""


# Operation error codes that mean "this zone cannot host it now" (GCE's own codes).
CAPACITY_CODES = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "QUOTA_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "UNSUPPORTED_OPERATION_GPU_UNAVAILABLE",
    }
)
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def classify_operation_error(
    zone: str, codes: list[str], http_status: int, message: str
) -> Exception:
    """The exception a failed (DONE, with errors) operation stands for."""
    for code in codes:
        if code in CAPACITY_CODES:
            return CapacityError(zone, code, message)
    if http_status in TRANSIENT_HTTP_STATUSES:
        return TransientError(f"{zone}: {','.join(codes) or http_status}: {message}")
    return ConfigError(f"{zone}: {','.join(codes) or http_status}: {message}")


class SupervisedElsewhere(ConfigError):
    """Another supervisor on this machine holds the job's lock (the message names its pid)."""


def transport_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the endpoint could not be reached" (refused, reset, DNS, timeout)
    rather than an answer from it: retried like a 5xx. The SDKs are imported lazily."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import requests

        found += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover - a pinned dependency of the google SDKs
        pass
    try:
        from google.auth.exceptions import TransportError as AuthTransportError

        found.append(AuthTransportError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def as_transient(err: BaseException, where: str) -> TransientError | None:
    """``err`` as a TransientError when it is a transport error, a 5xx or a 429 (from any
    google SDK, storage included); None when it is something else."""
    if isinstance(err, TransientError):
        return err
    if isinstance(err, transport_errors()):
        return TransientError(f"{where}: cannot reach the endpoint ({type(err).__name__})")
    try:
        from google.api_core import exceptions as api
    except ImportError:  # pragma: no cover
        return None
    if isinstance(err, (api.ServerError, api.TooManyRequests)):
        return TransientError(f"{where}: {getattr(err, 'code', '')} {type(err).__name__}")
    if isinstance(err, api.RetryError):
        # The SDK's own retries (google-cloud-storage: 120 s) gave up on a transient error:
        # still an outage, not a reason for the supervisor to die with a traceback.
        return TransientError(f"{where}: cannot reach the endpoint (retries exhausted)")
    return None
