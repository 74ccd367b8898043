"""projects: get and setCommonInstanceMetadata (project-wide metadata, incl. `ssh-keys`).

Any project id is accepted; a project is created on first use (state.Store.project).
"""

from __future__ import annotations

from localgce import links, regions
from localgce.errors import fingerprint_mismatch
from localgce.httpserver import Request
from localgce.instance_resource import validate_metadata_items
from localgce.lifecycle import Lifecycle
from localgce.operations import Operations
from localgce.state import Store, fingerprint


class Projects:
    def __init__(self, store: Store, ops: Operations, lifecycle: Lifecycle):
        self.store = store
        self.ops = ops
        self.lifecycle = lifecycle

    def get(self, req: Request, project: str) -> dict:
        with self.store.lock:
            proj = self.store.project(project)
            return {
                "kind": "compute#project",
                "id": proj["id"],
                "name": project,
                "creationTimestamp": proj["creationTimestamp"],
                "commonInstanceMetadata": {
                    "kind": "compute#metadata",
                    **proj["commonInstanceMetadata"],
                },
                "defaultServiceAccount": proj["defaultServiceAccount"],
                "quotas": regions.project_quotas(self.store, project),
                "selfLink": links.url(f"projects/{project}"),
                "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS",
            }

    def set_common_instance_metadata(self, req: Request, project: str) -> dict:
        """A stale fingerprint → 412. A missing one is accepted (emulator leniency, documented)."""
        body = req.json()
        items = validate_metadata_items(body.get("items", []))
        with self.store.lock:
            proj = self.store.project(project)
            sent = body.get("fingerprint")
            if sent is not None and sent != proj["commonInstanceMetadata"]["fingerprint"]:
                raise fingerprint_mismatch()

        def work() -> None:
            with self.store.lock:
                self.store.project(project)["commonInstanceMetadata"] = {
                    "items": items,
                    "fingerprint": fingerprint(items, self.store.new_hex()),
                }
                self.store.commit()
                keys = [k for k in self.store.instances if k.project == project]
            for key in keys:
                self.lifecycle.refresh_ssh_keys(key)

        return self.ops.run(
            "compute.projects.setCommonInstanceMetadata",
            project,
            f"projects/{project}",
            proj["id"],
            work,
            request_id=req.query.get("requestId"),
        )
