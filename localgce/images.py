"""images: insert (local directories, emulator-only), get, getFromFamily, list, delete, deprecate.

A local image is a directory holding `venv/` with `venv/bin/python`; `rawDisk.source` names it by
absolute path or file:// URL. Instances booted from it get `<image>/venv/bin` on PATH.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from localgce import links
from localgce.errors import already_exists, invalid, not_found
from localgce.httpserver import Request
from localgce.listing import list_response
from localgce.operations import Operations, public
from localgce.state import Store

UNUSABLE_STATES = {"OBSOLETE", "DELETED"}
FAMILY_SKIPPED_STATES = {"DEPRECATED", "OBSOLETE", "DELETED"}


def local_source(source: str) -> Path:
    """`/abs/dir` or `file:///abs/dir` → the directory; anything else → 400 saying what to pass."""
    if source.startswith("file://"):
        source = urllib.parse.unquote(urllib.parse.urlsplit(source).path)
    path = Path(source)
    if not path.is_absolute():
        raise invalid(
            f"rawDisk.source {source!r}: localgce images are local directories; "
            "pass an absolute path or a file:// URL"
        )
    if not (path / "venv" / "bin" / "python").exists():
        raise invalid(
            f"rawDisk.source {source!r} is not a localgce image: it needs venv/bin/python "
            "(a Python environment the instance will run)"
        )
    return path


class Images:
    def __init__(self, store: Store, ops: Operations):
        self.store = store
        self.ops = ops

    def _get(self, project: str, name: str) -> dict:
        image = self.store.images.get((project, name))
        if image is None:
            raise not_found(links.image_path(project, name))
        return image

    def resolve(self, source_image: str, default_project: str) -> dict:
        """`projects/P/global/images/NAME|family/F` or `global/images/...` → the image, or 404."""
        path = links.strip(source_image)
        parts = path.split("/")
        project = default_project
        if parts[0] == "projects" and len(parts) >= 2:
            project, parts = parts[1], parts[2:]
        if parts[:2] != ["global", "images"] or len(parts) not in (3, 4):
            raise invalid(f"Invalid value for field 'sourceImage': '{source_image}'.")
        with self.store.lock:
            if len(parts) == 4 and parts[2] == "family":
                return self._from_family(project, parts[3])
            image = self._get(project, parts[2])
            state = (image.get("deprecated") or {}).get("state")
            if state in UNUSABLE_STATES:
                raise invalid(f"The image '{links.image_path(project, parts[2])}' is {state}.")
            return image

    def _from_family(self, project: str, family: str) -> dict:
        candidates = [
            img
            for (proj, _), img in self.store.images.items()
            if proj == project
            and img.get("family") == family
            and img["status"] == "READY"
            and (img.get("deprecated") or {}).get("state") not in FAMILY_SKIPPED_STATES
        ]
        if not candidates:
            raise not_found(f"projects/{project}/global/images/family/{family}")
        return max(candidates, key=lambda img: (img["_created"], img["name"]))

    # --- handlers ----------------------------------------------------------------------------
    def insert(self, req: Request, project: str) -> dict:
        body = req.json()
        name = body.get("name", "")
        if not links.NAME_RE.match(name):
            raise invalid(f"Invalid value for field 'resource.name': '{name}'.")
        source = (body.get("rawDisk") or {}).get("source")
        if not source:
            raise invalid("localgce images need rawDisk.source = a local directory path")
        directory = local_source(source)
        path = links.image_path(project, name)
        with self.store.lock:
            self.store.project(project)
            if (project, name) in self.store.images:
                raise already_exists(path)
            image_id = self.store.new_id()

        def work() -> None:
            with self.store.lock:
                if (project, name) in self.store.images:
                    raise already_exists(path)
                image = {
                    "kind": "compute#image",
                    "id": image_id,
                    "name": name,
                    "description": body.get("description", ""),
                    "labels": body.get("labels", {}),
                    "status": "READY",
                    "sourceType": "RAW",
                    "rawDisk": {"source": str(directory), "containerType": "TAR"},
                    "diskSizeGb": str(body.get("diskSizeGb", "10")),
                    "archiveSizeBytes": "0",
                    "creationTimestamp": self.store.timestamp(),
                    "selfLink": links.url(path),
                    "_project": project,
                    "_created": self.store.clock(),
                    "_dir": str(directory),
                }
                if body.get("family"):
                    image["family"] = body["family"]
                self.store.images[(project, name)] = image
                self.store.commit()

        return self.ops.run(
            "insert", project, path, image_id, work, request_id=req.query.get("requestId")
        )

    def get(self, req: Request, project: str, image: str) -> dict:
        with self.store.lock:
            return public(self._get(project, image))

    def get_from_family(self, req: Request, project: str, family: str) -> dict:
        with self.store.lock:
            return public(self._from_family(project, family))

    def list(self, req: Request, project: str) -> dict:
        with self.store.lock:
            items = [public(i) for (p, _), i in sorted(self.store.images.items()) if p == project]
        return list_response(
            "compute#imageList", items, req.query, links.url(f"projects/{project}/global/images")
        )

    def delete(self, req: Request, project: str, image: str) -> dict:
        def work() -> None:
            with self.store.lock:
                self.store.images.pop((project, image), None)
                self.store.commit()

        return self._run("delete", req, project, image, work)

    def deprecate(self, req: Request, project: str, image: str) -> dict:
        body = req.json()
        state = body.get("state")
        if state not in (None, "ACTIVE", "DEPRECATED", "OBSOLETE", "DELETED"):
            raise invalid(f"Invalid value for field 'deprecationStatus.state': '{state}'.")

        def work() -> None:
            with self.store.lock:
                target = self._get(project, image)
                # An empty body (or ACTIVE) clears the deprecation (docs/gce-behaviour.md,
                # "Images and families").
                if not state or state == "ACTIVE":
                    target.pop("deprecated", None)
                else:
                    target["deprecated"] = {
                        k: v
                        for k, v in body.items()
                        if k in ("state", "replacement", "deprecated", "obsolete", "deleted")
                    }
                self.store.commit()

        return self._run("deprecate", req, project, image, work)

    def _run(self, op_type: str, req: Request, project: str, image: str, work) -> dict:
        """The Operation of a call on an existing image (else 404), doing `work`."""
        with self.store.lock:
            target_id = self._get(project, image)["id"]
        return self.ops.run(
            op_type,
            project,
            links.image_path(project, image),
            target_id,
            work,
            request_id=req.query.get("requestId"),
        )
