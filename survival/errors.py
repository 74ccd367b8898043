"""Error taxonomy: what the orchestrator retries, and how.

- ConfigError: the user's input or settings are wrong. Never retried; the message says what to do.
- CapacityError: the zone has no capacity for this shape (ZONE_RESOURCE_POOL_EXHAUSTED, stockouts,
  quota). Retried in the next zone of ``survival.zones``.
- TransientError: a server hiccup (5xx, timeouts, rate limits). Retried as is, with backoff.
Anything else is a bug or an unknown cloud error: it propagates with its traceback.
"""

from __future__ import annotations


class SurvivalError(Exception):
    """Base of the orchestrator's own errors."""


class ConfigError(SurvivalError):
    """Bad settings or arguments. The message is one line that says what to do."""


class CapacityError(SurvivalError):
    """No capacity (or quota) for this instance shape in this zone: try the next zone."""

    def __init__(self, zone: str, code: str, message: str) -> None:
        super().__init__(f"{zone}: {code}: {message}")
        self.zone = zone
        self.code = code


class TransientError(SurvivalError):
    """A transient API failure: retry the same call after a pause."""


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
    """The exception a failed (DONE, with errors) zonal operation stands for."""
    for code in codes:
        if code in CAPACITY_CODES:
            return CapacityError(zone, code, message)
    if http_status in TRANSIENT_HTTP_STATUSES:
        return TransientError(f"{zone}: {','.join(codes) or http_status}: {message}")
    return ConfigError(f"{zone}: {','.join(codes) or http_status}: {message}")
