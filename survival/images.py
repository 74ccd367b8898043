"""Images of a family through google-cloud-compute's ImagesClient: list, newest, deprecate, insert.

Works against real GCE and localgce alike: the caller passes an ``ImagesClient``-like object (or
the ``client_options``/``credentials`` to build one), so this module never reads configuration.
Mutations wait for their operation through a ``GlobalOperationsClient`` built with the same
endpoint, because ``ExtendedOperation.result()`` would poll compute.googleapis.com whatever the
client's endpoint (docs/gce-semantics.md §4.4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from survival.sdk import api_exceptions, compute_v1, make_client, wait_until_done

OPERATION_POLL_SECONDS = 1.0
OPERATION_TIMEOUT_SECONDS = 600.0


class ImageError(Exception):
    """A user-facing failure (missing image, API rejection, timeout) with what to do next."""


@dataclass(frozen=True)
class ImageInfo:
    """One image as `invoke images` shows it."""

    name: str
    family: str
    status: str
    creation_timestamp: str
    deprecated_state: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    self_link: str = ""

    @property
    def deprecated(self) -> bool:
        """True for DEPRECATED, OBSOLETE or DELETED (images a family lookup skips)."""
        return self.deprecated_state not in ("", "ACTIVE")


def _created(info: ImageInfo) -> tuple[datetime, str]:
    try:
        stamp = datetime.fromisoformat(info.creation_timestamp)
    except ValueError:
        stamp = datetime.min
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    return stamp, info.name


def _info(image: Any) -> ImageInfo:
    deprecated = getattr(image, "deprecated", None)
    state = getattr(deprecated, "state", "") if deprecated else ""
    return ImageInfo(
        name=image.name,
        family=getattr(image, "family", "") or "",
        status=getattr(image, "status", "") or "",
        creation_timestamp=getattr(image, "creation_timestamp", "") or "",
        deprecated_state=state or "",
        labels=dict(getattr(image, "labels", {}) or {}),
        self_link=getattr(image, "self_link", "") or "",
    )


class FamilyImages:
    """Image verbs for one project.

    ``images_client``/``operations_client``: ImagesClient/GlobalOperationsClient-like objects
    (tests pass fakes); when absent they are built from ``client_options`` and ``credentials``.
    """

    def __init__(
        self,
        project: str,
        *,
        images_client: Any = None,
        operations_client: Any = None,
        client_options: dict[str, Any] | None = None,
        credentials: Any = None,
        transport: str | None = None,
        poll_seconds: float = OPERATION_POLL_SECONDS,
        timeout_seconds: float = OPERATION_TIMEOUT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.project = project
        self._images = images_client
        self._operations = operations_client
        self._kwargs: dict[str, Any] = {
            "client_options": client_options,
            "credentials": credentials,
        }
        if transport:
            self._kwargs["transport"] = transport
        self._poll_seconds = poll_seconds
        self._timeout_seconds = timeout_seconds
        self._sleep = sleep

    @property
    def images(self) -> Any:
        if self._images is None:
            self._images = make_client(compute_v1().ImagesClient, **self._kwargs)
        return self._images

    @property
    def operations(self) -> Any:
        if self._operations is None:
            self._operations = make_client(compute_v1().GlobalOperationsClient, **self._kwargs)
        return self._operations

    def list(self, family: str | None = None) -> list[ImageInfo]:
        """Images of ``family`` (all of the project's when None), newest first."""
        request: dict[str, Any] = {"project": self.project}
        if family:
            request["filter"] = f'family = "{family}"'
        found = [_info(image) for image in self._call(self.images.list, request=request)]
        if family:
            # A filter is a hint some servers ignore; the family is what counts.
            found = [info for info in found if info.family == family]
        return sorted(found, key=_created, reverse=True)

    def newest(self, family: str) -> ImageInfo | None:
        """The image a VM booted from ``family`` gets (GCE's getFromFamily), or None."""
        exc = api_exceptions()
        try:
            image = self.images.get_from_family(project=self.project, family=family)
        except exc.NotFound:
            return None
        return _info(image)

    def deprecate(self, name: str, *, state: str = "DEPRECATED", replacement: str = "") -> None:
        """Mark image ``name`` DEPRECATED (or OBSOLETE/DELETED/ACTIVE); optional replacement."""
        if state not in ("ACTIVE", "DEPRECATED", "OBSOLETE", "DELETED"):
            raise ImageError(f"state {state!r}: choose ACTIVE, DEPRECATED, OBSOLETE or DELETED")
        status: dict[str, Any] = {"state": state}
        if replacement:
            status["replacement"] = (
                f"projects/{self.project}/global/images/{replacement}"
                if "/" not in replacement
                else replacement
            )
        operation = self._call(
            self.images.deprecate,
            project=self.project,
            image=name,
            deprecation_status_resource=status,
        )
        self._wait(operation)

    def insert_local(
        self, name: str, family: str, source_dir: str, labels: dict[str, str] | None = None
    ) -> None:
        """Register a localgce image: ``source_dir`` (absolute) holds venv/bin/python."""
        body = {
            "name": name,
            "family": family,
            "raw_disk": {"source": source_dir},
            "labels": labels or {},
            "description": "GCE Survival Kit local image (invoke bake-image --backend local)",
        }
        operation = self._call(self.images.insert, project=self.project, image_resource=body)
        self._wait(operation)

    # --- plumbing ---------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        exc = api_exceptions()
        try:
            return fn(**kwargs)
        except exc.NotFound as err:
            raise ImageError(
                f"{err.message}: list the images with `invoke images` and check survival.project"
            ) from err
        except exc.Conflict as err:
            raise ImageError(f"{err.message}: an image of that name exists already") from err
        except exc.GoogleAPICallError as err:
            raise ImageError(f"the Compute API rejected the request: {err.message}") from err

    def _wait(self, operation: Any) -> None:
        finished = wait_until_done(
            operation,
            lambda name: self._call(self.operations.get, project=self.project, operation=name),
            poll_seconds=self._poll_seconds,
            timeout_seconds=self._timeout_seconds,
            sleep=self._sleep,
        )
        if finished is None:
            raise ImageError(
                f"operation {operation.name} is not DONE after {self._timeout_seconds:g} s; "
                "check it with `gcloud compute operations describe`"
            )
        operation = finished
        errors = list(operation.error.errors) if operation.error else []
        if errors:
            raise ImageError("; ".join(f"{e.code}: {e.message}" for e in errors))


def for_backend(backend: str, project: str, local_state_dir: str) -> FamilyImages:
    """FamilyImages for the backend: localgce's endpoint, or GCE with default credentials."""
    if backend == "local":
        from localgce.client import NotRunning, compute_client_options, load_endpoints

        try:
            endpoints = load_endpoints(local_state_dir)
        except NotRunning as err:
            raise ImageError(str(err)) from err
        return FamilyImages("local-project", **compute_client_options(endpoints))
    if backend == "gce":
        if not project:
            raise ImageError("no GCP project: set survival.project in invoke.yaml")
        return FamilyImages(project)
    raise ImageError(f"backend {backend!r}: choose local or gce")


def format_table(found: list[ImageInfo], family: str) -> str:
    """`invoke images` output: newest first, the image VMs get marked `*`, deprecated marked."""
    if not found:
        return f"no images in family {family}: bake one with `invoke bake-image`"
    current = next(
        (info.name for info in found if not info.deprecated and info.status == "READY"), ""
    )
    width = max(len(info.name) for info in found)
    lines = [f"  {'NAME':<{width}}  {'CREATED':<29}  {'STATUS':<8}  DEPRECATED"]
    for info in found:
        mark = "*" if info.name == current else " "
        lines.append(
            f"{mark} {info.name:<{width}}  {info.creation_timestamp:<29}  {info.status:<8}  "
            f"{info.deprecated_state if info.deprecated else '-'}"
        )
    lines.append(f"* = what a VM booted from family {family} gets")
    return "\n".join(lines)
