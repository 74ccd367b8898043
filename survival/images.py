"""Images as `invoke images` shows them: `ImageInfo` and the table. The API calls that list,
look up, deprecate and insert images are verbs of the one Compute adaptor (`survival.gce`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


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


def image_info(image: Any) -> ImageInfo:
    """An ImageInfo from a compute_v1 ``Image``."""
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


def newest_first(found: list[ImageInfo]) -> list[ImageInfo]:
    """``found`` sorted by creation time, newest first (ties: by name)."""
    return sorted(found, key=_created, reverse=True)


def _created(info: ImageInfo) -> tuple[datetime, str]:
    try:
        stamp = datetime.fromisoformat(info.creation_timestamp)
    except ValueError:
        stamp = datetime.min
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    return stamp, info.name


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
