"""`survival.compute.Compute` on google-cloud-compute: real GCE, or localgce via ``api_endpoint``.

The SDK is imported lazily (``invoke --list`` stays instant). Mutating calls use the ``*_unary``
methods and wait on the returned Operation through a Zone/GlobalOperationsClient built with the
*same* client options: ``ExtendedOperation.result()`` would poll compute.googleapis.com whatever
the endpoint (gce-semantics §4.4), and it hides the operation's error codes we classify on.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from survival.compute import InstanceInfo
from survival.errors import ConfigError, TransientError, classify_operation_error
from survival.sdk import api_exceptions, compute_v1, make_client, wait_until_done

OPERATION_POLL_SECONDS = 0.5
OPERATION_TIMEOUT_SECONDS = 900.0
METADATA_FINGERPRINT_RETRIES = 5


def _to_raw(message: Any) -> dict[str, Any]:
    return json.loads(type(message).to_json(message))


def _provisioning_model(scheduling: dict[str, Any]) -> str:
    if scheduling.get("provisioningModel"):
        return str(scheduling["provisioningModel"])
    return "PREEMPTIBLE" if scheduling.get("preemptible") else "STANDARD"


def instance_info(raw: dict[str, Any]) -> InstanceInfo:
    """An InstanceInfo from an Instance's REST JSON."""
    items = (raw.get("metadata") or {}).get("items") or []
    nics = raw.get("networkInterfaces") or [{}]
    access = (nics[0].get("accessConfigs") or [{}])[0]
    return InstanceInfo(
        name=raw.get("name", ""),
        zone=str(raw.get("zone", "")).rsplit("/", 1)[-1],
        status=raw.get("status", ""),
        provisioning_model=_provisioning_model(raw.get("scheduling") or {}),
        metadata={i["key"]: i.get("value", "") for i in items},
        labels=dict(raw.get("labels") or {}),
        nat_ip=access.get("natIP") or None,
        creation_timestamp=raw.get("creationTimestamp", ""),
        last_start_timestamp=raw.get("lastStartTimestamp", ""),
        raw=raw,
    )


class GoogleCompute:
    """Compute verbs for one project. ``client_kwargs`` (credentials, client_options,
    transport) select the endpoint; every client, the operations clients included, gets them.

    ``extension_url``: localgce's compute URL, for its emulator-only preempt endpoint; None on
    GCE, where preempting means simulateMaintenanceEvent.
    """

    def __init__(
        self,
        project: str,
        *,
        client_kwargs: dict[str, Any] | None = None,
        extension_url: str | None = None,
        poll_seconds: float = OPERATION_POLL_SECONDS,
        timeout_seconds: float = OPERATION_TIMEOUT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.project = project
        self._client_kwargs = dict(client_kwargs or {})
        self._extension_url = extension_url
        self._poll_seconds = poll_seconds
        self._timeout_seconds = timeout_seconds
        self._sleep = sleep
        self._clients: dict[str, Any] = {}

    def _client(self, kind: str) -> Any:
        if kind not in self._clients:
            cls = getattr(compute_v1(), kind)
            self._clients[kind] = make_client(cls, **self._client_kwargs)
        return self._clients[kind]

    def _call(self, fn: Callable[..., Any], where: str, /, **kwargs: Any) -> Any:
        """Run one API call, mapping HTTP errors onto the taxonomy (``where``: for messages)."""
        exc = api_exceptions()
        try:
            return fn(**kwargs)
        except (exc.ServiceUnavailable, exc.TooManyRequests, exc.InternalServerError,
                exc.GatewayTimeout, exc.DeadlineExceeded) as err:  # fmt: skip
            raise TransientError(f"{where}: {err.message}") from err
        except exc.Conflict as err:
            raise ConfigError(
                f"{err.message}: pick another --name or remove it with `invoke down NAME`"
            ) from err
        except exc.BadRequest as err:
            raise ConfigError(f"{where}: the API rejected the request: {err.message}") from err
        except exc.Forbidden as err:
            raise ConfigError(
                f"{err.message}: check the project id and that your account may use Compute Engine"
            ) from err

    def _wait(self, operation: Any, zone: str | None) -> None:
        """Wait for DONE through an operations client with our endpoint; raise on errors."""
        if zone:
            client = self._client("ZoneOperationsClient")

            def refresh(name: str) -> Any:
                return client.get(project=self.project, zone=zone, operation=name)
        else:
            client = self._client("GlobalOperationsClient")

            def refresh(name: str) -> Any:
                return client.get(project=self.project, operation=name)

        finished = wait_until_done(
            operation,
            refresh,
            poll_seconds=self._poll_seconds,
            timeout_seconds=self._timeout_seconds,
            sleep=self._sleep,
        )
        if finished is None:
            raise TransientError(f"operation {operation.name} not DONE after a while")
        operation = finished
        errors = list(operation.error.errors) if operation.error else []
        if errors:
            codes = [e.code for e in errors]
            message = "; ".join(e.message for e in errors if e.message)
            raise classify_operation_error(
                zone or "global", codes, operation.http_error_status_code, message
            )

    # --- instances -------------------------------------------------------------------------
    def insert_instance(self, zone: str, body: dict[str, Any]) -> None:
        resource = compute_v1().Instance.from_json(json.dumps(body))
        client = self._client("InstancesClient")
        op = self._call(
            client.insert_unary, zone, project=self.project, zone=zone, instance_resource=resource
        )
        self._wait(op, zone)

    def get_instance(self, zone: str, name: str) -> InstanceInfo | None:
        client = self._client("InstancesClient")
        try:
            inst = self._call(client.get, zone, project=self.project, zone=zone, instance=name)
        except api_exceptions().NotFound:
            return None
        return instance_info(_to_raw(inst))

    def list_instances(
        self, zones: tuple[str, ...], label: str | None = None
    ) -> list[InstanceInfo]:
        client = self._client("InstancesClient")
        found = []
        for zone in zones:
            for inst in self._call(client.list, zone, project=self.project, zone=zone):
                info = instance_info(_to_raw(inst))
                if label is None or label in info.labels:
                    found.append(info)
        return found

    def _instance_verb(self, verb: str, zone: str, name: str) -> None:
        client = self._client("InstancesClient")
        op = self._call(
            getattr(client, f"{verb}_unary"), zone, project=self.project, zone=zone, instance=name
        )
        self._wait(op, zone)

    def start_instance(self, zone: str, name: str) -> None:
        self._instance_verb("start", zone, name)

    def stop_instance(self, zone: str, name: str) -> None:
        self._instance_verb("stop", zone, name)

    def delete_instance(self, zone: str, name: str) -> None:
        try:
            self._instance_verb("delete", zone, name)
        except api_exceptions().NotFound:
            return

    def preempt_instance(self, zone: str, name: str) -> None:
        if self._extension_url is None:
            self._instance_verb("simulate_maintenance_event", zone, name)
            return
        url = (
            f"{self._extension_url}/compute/v1/projects/{self.project}/zones/{zone}"
            f"/instances/{name}/preempt"
        )
        request = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            body = response.read()
        # The answer is a zonal Operation like any other: wait on it and raise its errors (a VM
        # that is not RUNNING cannot be preempted).
        operation = compute_v1().Operation.from_json(body, ignore_unknown_fields=True)
        self._wait(operation, zone)

    def serial_output(self, zone: str, name: str, start: int = 0) -> tuple[str, int]:
        client = self._client("InstancesClient")
        out = self._call(
            client.get_serial_port_output,
            zone,
            request={"project": self.project, "zone": zone, "instance": name, "port": 1,
                     "start": start},
        )  # fmt: skip
        return out.contents, int(out.next_)

    # --- images and project metadata -------------------------------------------------------
    def image_from_family(self, family: str) -> str:
        client = self._client("ImagesClient")
        try:
            image = self._call(
                client.get_from_family, "global", project=self.project, family=family
            )
        except api_exceptions().NotFound:
            raise ConfigError(
                f"no image in family {family!r} of project {self.project}: run `invoke bake-image` "
                "(on localgce `make demo` registers one) or set survival.image_family"
            ) from None
        return image.self_link or f"projects/{self.project}/global/images/{image.name}"

    def get_project_metadata(self) -> dict[str, str]:
        client = self._client("ProjectsClient")
        project = self._call(client.get, "global", project=self.project)
        items = project.common_instance_metadata.items
        return {i.key: i.value for i in items}

    def set_project_metadata_item(self, key: str, value: str) -> None:
        sdk = compute_v1()
        client = self._client("ProjectsClient")
        for _ in range(METADATA_FINGERPRINT_RETRIES):
            current = self._call(client.get, "global", project=self.project)
            meta = current.common_instance_metadata
            items = [sdk.Items(key=i.key, value=i.value) for i in meta.items if i.key != key]
            items.append(sdk.Items(key=key, value=value))
            resource = sdk.Metadata(fingerprint=meta.fingerprint, items=items)
            try:
                op = client.set_common_instance_metadata_unary(
                    project=self.project, metadata_resource=resource
                )
            except api_exceptions().PreconditionFailed:
                continue  # someone else changed it in between: read again
            self._wait(op, None)
            return
        raise TransientError("project metadata kept changing while setting it: try again")
