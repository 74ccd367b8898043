"""Resource names and the full-URL links GCE puts in responses (docs/gce-behaviour.md,
"Resource names and links")."""

from __future__ import annotations

import re

API_ROOT = "https://www.googleapis.com/compute/v1/"
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_URL_PREFIXES = (API_ROOT, "https://compute.googleapis.com/compute/v1/", "compute/v1/")


def url(path: str) -> str:
    """`projects/p/zones/z/instances/i` → the full link."""
    return API_ROOT + path


def strip(link: str) -> str:
    """A full or partial link → its path relative to the API root (`projects/...`, `zones/...`)."""
    for prefix in _URL_PREFIXES:
        if link.startswith(prefix):
            return link[len(prefix) :]
    return link.lstrip("/")


def last(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[-1]


def instance_path(project: str, zone: str, name: str) -> str:
    return f"projects/{project}/zones/{zone}/instances/{name}"


def image_path(project: str, name: str) -> str:
    return f"projects/{project}/global/images/{name}"
