"""The cloud interface the orchestrator is written against: typed verbs, one backend per cloud.

`survival.gce.GoogleCompute` implements it with google-cloud-compute, against real GCE or against
localgce (same client, another ``api_endpoint``). Tests may implement it with a fake. Verbs raise
the taxonomy in `survival.errors`; "not found" is ``None`` from getters, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from survival.images import ImageInfo

SSH_DEFAULT_PORT = 22


@dataclass(frozen=True)
class InstanceInfo:
    """What the orchestrator needs to know about one instance (``raw``: the API's JSON)."""

    name: str
    zone: str
    status: str
    provisioning_model: str
    metadata: dict[str, str]
    labels: dict[str, str]
    nat_ip: str | None
    creation_timestamp: str = ""
    last_start_timestamp: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ssh_address(self) -> tuple[str, int] | None:
        """(host, port) for SSH. localgce's natIP is "127.0.0.1:PORT"; GCE's is a plain IP."""
        if not self.nat_ip:
            return None
        host, sep, port = self.nat_ip.rpartition(":")
        if sep and port.isdigit():
            return host, int(port)
        return self.nat_ip, SSH_DEFAULT_PORT


class Compute(Protocol):
    """Typed verbs on instances, images and project metadata of one project."""

    project: str

    def insert_instance(self, zone: str, body: dict[str, Any]) -> None:
        """Create an instance from a REST-shaped Instance body; CapacityError if the zone is out."""

    def get_instance(self, zone: str, name: str) -> InstanceInfo | None:
        """The instance, or None if it does not exist."""

    def list_instances(
        self, zones: tuple[str, ...], label: str | None = None
    ) -> list[InstanceInfo]:
        """Instances in these zones, optionally only those carrying label ``label`` (any value)."""

    def start_instance(self, zone: str, name: str) -> None:
        """Start a TERMINATED instance; CapacityError if the zone has no capacity."""

    def stop_instance(self, zone: str, name: str) -> None:
        """Stop (runs the shutdown script inside the window)."""

    def delete_instance(self, zone: str, name: str) -> None:
        """Delete the instance (absent already is fine)."""

    def preempt_instance(self, zone: str, name: str) -> None:
        """Preempt now: localgce's preempt endpoint; on GCE simulateMaintenanceEvent."""

    def serial_output(self, zone: str, name: str, start: int = 0) -> tuple[str, int]:
        """Serial port 1 output from byte ``start``; returns (text, next start)."""

    def list_images(self, family: str | None = None) -> list[ImageInfo]:
        """Images of ``family`` (all of the project's when None), newest first."""

    def newest_image(self, family: str) -> ImageInfo | None:
        """The image a VM booted from ``family`` gets (GCE's getFromFamily), or None."""

    def image_from_family(self, family: str) -> str:
        """selfLink of the newest usable image of ``family``; ConfigError if there is none."""

    def deprecate_image(
        self, name: str, *, state: str = "DEPRECATED", replacement: str = ""
    ) -> None:
        """Mark image ``name`` DEPRECATED (or OBSOLETE/DELETED/ACTIVE); optional replacement."""

    def insert_local_image(
        self, name: str, family: str, source_dir: str, labels: dict[str, str] | None = None
    ) -> None:
        """Register a localgce image: ``source_dir`` (absolute) holds venv/bin/python."""

    def region_quotas(self, region: str) -> dict[str, tuple[float, float]]:
        """metric → (limit, usage) of a region's quotas (regions.get)."""

    def project_quotas(self) -> dict[str, tuple[float, float]]:
        """metric → (limit, usage) of the project's global quotas (projects.get)."""

    def accelerator_types(self, zone: str) -> list[str]:
        """Names of the accelerator types the zone offers (acceleratorTypes.list)."""

    def default_service_account(self) -> str:
        """The project's default service account email."""

    def get_network(self, name: str) -> dict[str, Any] | None:
        """The VPC network's REST JSON, or None if it does not exist."""

    def get_subnetwork(self, region: str, name: str) -> dict[str, Any] | None:
        """The subnetwork's REST JSON, or None if it does not exist."""

    def system_events(self, zone: str, instance_id: str) -> list[tuple[str, str]]:
        """(operationType, insertTime) of the events GCE recorded itself for the instance
        (a guest power-off, a preemption, ...), newest first."""

    def get_project_metadata(self) -> dict[str, str]:
        """The project's common instance metadata items."""

    def set_project_metadata_item(self, key: str, value: str) -> None:
        """Set one common instance metadata item, keeping the others (fingerprint-checked)."""
