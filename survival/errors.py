"""Error taxonomy: what the orchestrator retries, and how. Every error the kit raises on purpose is
a `SurvivalError`; `survival.cli.user_errors` turns one into a one-line message and exit status 1.

- ConfigError: the user's input or settings are wrong. Never retried; the message says what to do.
  ChaosError: --chaos asks for more preemptions than the run has steps for.
  QuotaError: a GPU (or other) quota is used up. Another zone of the same region never helps; a
  zone in another region may (regional quotas), so placement tries one there before giving up.
- ImageError, BakeError: an image operation or a Packer bake failed; the message says what next.
- CapacityError: the zone cannot host this shape now (ZONE_RESOURCE_POOL_EXHAUSTED*). Retried in
  the next zone of ``survival.zones``.
  PreemptedWhileCreating: UNSUPPORTED_OPERATION, a Spot VM preempted while it was being created
  or started: retried a few times in the same zone, then the next zone.
  AcceleratorUnavailable: the zone does not offer the GPU type: the zone is skipped.
- TransientError: a server hiccup (5xx, timeouts, no connection). Retried as is, with backoff.
  RateLimited: 403 rateLimitExceeded / RESOURCE_OPERATION_RATE_EXCEEDED: backoff with jitter.
  ResourceNotReady: RESOURCE_NOT_READY (start while the VM is still STOPPING): wait, retry.
  NoCapacityError: no zone had capacity; the supervisor waits and tries the zones again.
- JobFailed: the job dir says FAILED, or the supervisor gave up.
Anything else is a bug or an unknown cloud error: it propagates with its traceback.

How each Compute error maps here, with sources: docs/gce-behaviour.md, "Errors the orchestrator
meets and what it does".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

QUOTA_INCREASE_URL = "https://cloud.google.com/docs/quotas/view-manage#requesting_higher_quota"


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
    """No capacity for this instance shape in this zone: try the next zone."""

    def __init__(self, zone: str, code: str, message: str) -> None:
        super().__init__(f"{zone}: {code}: {message}")
        self.zone = zone
        self.code = code


class PreemptedWhileCreating(CapacityError):
    """UNSUPPORTED_OPERATION: the Spot VM was preempted while it was being created or started.
    Try the same zone again a few times, then move on like a capacity error."""


class AcceleratorUnavailable(CapacityError):
    """The zone does not offer the requested accelerator type: skip the zone."""


class QuotaError(ConfigError):
    """A quota is used up. ``region`` is None for a global quota (GPUS_ALL_REGIONS): then no
    zone anywhere helps. ``limit``/``usage`` are filled from regions.get / projects.get when they
    could be read (None otherwise)."""

    def __init__(
        self,
        metric: str,
        region: str | None,
        *,
        limit: float | None = None,
        usage: float | None = None,
        detail: str = "",
    ) -> None:
        self.metric = metric
        self.region = region
        self.limit = limit
        self.usage = usage
        self.detail = detail
        super().__init__(self._message())

    def with_numbers(self, limit: float | None, usage: float | None) -> QuotaError:
        return QuotaError(self.metric, self.region, limit=limit, usage=usage, detail=self.detail)

    def _message(self) -> str:
        where = f"in region {self.region}" if self.region else "(global, all regions)"
        numbers = []
        if self.limit is not None:
            numbers.append(f"limit {_number(self.limit)}")
        if self.usage is not None:
            numbers.append(f"usage {_number(self.usage)}")
        shown = f" ({', '.join(numbers)})" if numbers else ""
        scope = (
            f"another zone of {self.region} does not help"
            if self.region
            else "no zone or region helps"
        )
        return (
            f"quota {self.metric} {where} is exceeded{shown}: {scope}; request more at "
            f"{QUOTA_INCREASE_URL}, or ask for fewer GPUs (--gpu)"
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class TransientError(SurvivalError):
    """A transient API failure: retry the same call after a pause."""


class RateLimited(TransientError):
    """The API's rate limit (403 rateLimitExceeded, RESOURCE_OPERATION_RATE_EXCEEDED): retry
    after a jittered backoff."""


class ResourceNotReady(TransientError):
    """RESOURCE_NOT_READY: the instance is still changing state (start while STOPPING)."""


class NoCapacityError(TransientError):
    """Every zone tried was out of capacity. A launch reports it; the supervisor backs off and
    tries the zones again, since capacity comes back."""


class JobFailed(SurvivalError):
    """The job dir has a FAILED marker, or the supervisor gave up."""


class SshUnreachable(SurvivalError):
    """The instance's sshd cannot be reached; `invoke ssh-logs` falls back to the serial console."""


# GCE's own codes (Operation error.errors[].code, or a synchronous error's reason).
CAPACITY_CODES = frozenset(
    {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"}
)
PREEMPTED_WHILE_CREATING_CODES = frozenset({"UNSUPPORTED_OPERATION"})
RATE_LIMIT_CODES = frozenset(
    {"RATELIMITEXCEEDED", "USERRATELIMITEXCEEDED", "RESOURCE_OPERATION_RATE_EXCEEDED"}
)
NOT_READY_CODES = frozenset({"RESOURCE_NOT_READY", "RESOURCENOTREADY"})
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "QUOTAEXCEEDED"})
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

_QUOTA_METRIC_RE = re.compile(r"Quota '([A-Za-z0-9_.\-/]+)' exceeded")
_QUOTA_REGION_RE = re.compile(r"in region ([a-z]+-[a-z]+[0-9]+)")
_ACCELERATOR_RE = re.compile(r"acceleratorTypes?\b", re.IGNORECASE)


def region_of(zone: str) -> str:
    """``us-central1-a`` → ``us-central1``."""
    return zone.rsplit("-", 1)[0]


def quota_metric_name(metric: str) -> str:
    """``compute.googleapis.com/nvidia_t4_gpus`` (quotaInfo.metricName) → ``NVIDIA_T4_GPUS``
    (the name regions.get lists)."""
    return metric.rsplit("/", 1)[-1].upper()


def quota_error(zone: str, message: str, quota_info: dict[str, Any] | None = None) -> QuotaError:
    """The QuotaError a QUOTA_EXCEEDED (Operation) or quotaExceeded (403) stands for: the metric
    and region from the error's quotaInfo when present, else from its message."""
    info = quota_info or {}
    metric = str(info.get("metricName") or "")
    if not metric:
        found = _QUOTA_METRIC_RE.search(message)
        metric = found.group(1) if found else "UNKNOWN"
    metric = quota_metric_name(metric)
    dimensions = info.get("dimensions") or {}
    region = dimensions.get("region")
    if region is None:
        found = _QUOTA_REGION_RE.search(message)
        region = found.group(1) if found else None
    if metric.endswith("ALL_REGIONS") or (region is None and "global" in message.lower()):
        region = None
    elif region is None and zone and zone != "global":
        region = region_of(zone)
    limit = info.get("limit")
    return QuotaError(
        metric, region, limit=float(limit) if limit is not None else None, detail=message
    )


def mentions_accelerator(message: str) -> bool:
    return bool(_ACCELERATOR_RE.search(message or ""))


def classify_codes(
    zone: str,
    codes: Iterable[str],
    message: str,
    *,
    quota_info: dict[str, Any] | None = None,
) -> SurvivalError | None:
    """The error GCE's codes (or reasons) stand for, or None when none of them is known."""
    for code in codes:
        upper = (code or "").upper()
        if upper in CAPACITY_CODES:
            return CapacityError(zone, upper, message)
        if upper in PREEMPTED_WHILE_CREATING_CODES:
            return PreemptedWhileCreating(zone, upper, message)
        if upper in QUOTA_CODES:
            return quota_error(zone, message, quota_info)
        if upper in RATE_LIMIT_CODES:
            return RateLimited(f"{zone}: {code}: {message}")
        if upper in NOT_READY_CODES:
            return ResourceNotReady(f"{zone}: {code}: {message}")
    return None


def classify_operation_error(
    zone: str,
    codes: list[str],
    http_status: int,
    message: str,
    *,
    quota_info: dict[str, Any] | None = None,
) -> Exception:
    """The exception a failed (DONE, with errors) operation stands for."""
    known = classify_codes(zone, codes, message, quota_info=quota_info)
    if known is not None:
        return known
    if http_status in (400, 404) and mentions_accelerator(message):
        return AcceleratorUnavailable(zone, ",".join(codes) or str(http_status), message)
    if http_status in TRANSIENT_HTTP_STATUSES:
        return TransientError(f"{zone}: {','.join(codes) or http_status}: {message}")
    return ConfigError(f"{zone}: {','.join(codes) or http_status}: {message}")


def error_reasons(err: Any) -> list[str]:
    """The ``reason`` of each entry of a google.api_core exception's ``errors`` (GCE's
    ``error.errors[].reason``), plus ErrorInfo's reason when the SDK filled it."""
    reasons = []
    for entry in getattr(err, "errors", None) or []:
        reason = entry.get("reason") if isinstance(entry, dict) else getattr(entry, "reason", "")
        if reason:
            reasons.append(str(reason))
    reason = getattr(err, "reason", None)
    if reason:
        reasons.append(str(reason))
    return reasons


def classify_http_error(zone: str, err: Any) -> SurvivalError | None:
    """What a synchronous Compute API error means, when it is one of GCE's known ones: a 403 is
    not always a configuration error (rate limits and quotas come as 403 too)."""
    message = str(getattr(err, "message", "") or err)
    known = classify_codes(zone, error_reasons(err), message)
    if known is not None:
        return known
    status = getattr(err, "code", None)
    if status in (400, 404) and mentions_accelerator(message):
        return AcceleratorUnavailable(zone, f"HTTP {status}", message)
    return None


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
    """``err`` as a TransientError when it is a transport error, a 5xx, a 429 or a rate-limit
    403 (from any google SDK, storage included); None when it is something else."""
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
    if isinstance(err, api.Forbidden) and any(
        r.upper() in RATE_LIMIT_CODES for r in error_reasons(err)
    ):
        return RateLimited(f"{where}: rate limit exceeded")
    if isinstance(err, api.RetryError):
        # The SDK's own retries (google-cloud-storage: 120 s) gave up on a transient error:
        # still an outage, not a reason for the supervisor to die with a traceback.
        return TransientError(f"{where}: cannot reach the endpoint (retries exhausted)")
    return None
