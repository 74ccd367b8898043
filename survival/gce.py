"""`survival.compute.Compute` on google-cloud-compute: real GCE, or localgce via ``api_endpoint``.

The one adaptor between the kit and the Compute API: instances, images and project metadata. The
SDK is imported lazily (``invoke --list`` stays instant) and its clients are built here only.
Mutating calls use the ``*_unary`` methods and wait on the returned Operation in `_wait`, through a
Zone/GlobalOperationsClient built with the *same* client options: ``ExtendedOperation.result()``
would poll compute.googleapis.com whatever the endpoint (docs/gce-behaviour.md, "Waiting on
operations from Python"), and it hides the operation's error codes we classify on.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from survival.compute import InstanceInfo
from survival.errors import (
    ConfigError,
    ImageError,
    SurvivalError,
    TransientError,
    classify_operation_error,
    transport_errors,
)
from survival.images import ImageInfo, image_info, newest_first
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


# How an API error (google.api_core.exceptions.GoogleAPICallError) reads to the user, per kind of
# resource: a SurvivalError, or None to let the API's exception through (NotFound for getters).
Translate = Callable[[str, Any, Any], SurvivalError | None]


def _instance_error(where: str, err: Any, exc: Any) -> SurvivalError | None:
    if isinstance(err, exc.Conflict):
        return ConfigError(
            f"{err.message}: pick another --name or remove it with `invoke down NAME`"
        )
    if isinstance(err, exc.BadRequest):
        return ConfigError(f"{where}: the API rejected the request: {err.message}")
    if isinstance(err, exc.Forbidden):
        return ConfigError(
            f"{err.message}: check the project id and that your account may use Compute Engine"
        )
    return None


def _image_error(where: str, err: Any, exc: Any) -> SurvivalError | None:
    if isinstance(err, exc.NotFound):
        return ImageError(
            f"{err.message}: list the images with `invoke images` and check survival.project"
        )
    if isinstance(err, exc.Conflict):
        return ImageError(f"{err.message}: an image of that name exists already")
    return ImageError(f"the Compute API rejected the request: {err.message}")


IMAGE_STATES = ("ACTIVE", "DEPRECATED", "OBSOLETE", "DELETED")


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

    def _call(
        self,
        fn: Callable[..., Any],
        where: str,
        translate: Translate = _instance_error,
        /,
        **kwargs: Any,
    ) -> Any:
        """Run one API call, mapping HTTP errors onto the taxonomy (``where``: for messages;
        ``translate``: what the errors of this kind of resource mean to the user)."""
        exc = api_exceptions()
        try:
            return fn(**kwargs)
        except (exc.ServiceUnavailable, exc.TooManyRequests, exc.InternalServerError,
                exc.GatewayTimeout, exc.DeadlineExceeded) as err:  # fmt: skip
            raise TransientError(f"{where}: {err.message}") from err
        except exc.GoogleAPICallError as err:
            if isinstance(err, exc.ServerError):  # any other 5xx: transient too
                raise TransientError(f"{where}: {err.message}") from err
            mapped = translate(where, err, exc)
            if mapped is None:
                raise
            raise mapped from err
        except transport_errors() as err:
            # Refused/reset connections, DNS failures, timeouts: the API did not answer at all.
            raise TransientError(
                f"{where}: cannot reach the Compute API ({type(err).__name__})"
            ) from err

    def _wait(self, operation: Any, zone: str | None) -> None:
        """Wait for DONE through an operations client with our endpoint; raise on errors."""
        if zone:
            client = self._client("ZoneOperationsClient")

            def refresh(name: str) -> Any:
                return self._call(client.get, zone, project=self.project, zone=zone, operation=name)
        else:
            client = self._client("GlobalOperationsClient")

            def refresh(name: str) -> Any:
                return self._call(client.get, "global", project=self.project, operation=name)

        finished = wait_until_done(
            operation,
            refresh,
            poll_seconds=self._poll_seconds,
            timeout_seconds=self._timeout_seconds,
            sleep=self._sleep,
        )
        if finished is None:
            raise TransientError(
                f"operation {operation.name} is not DONE after {self._timeout_seconds:g} s; "
                "check it with `gcloud compute operations describe`"
            )
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
        # The extension authenticates like the API: the clients' own credentials sign the call.
        headers: dict[str, str] = {}
        credentials = self._client_kwargs.get("credentials")
        if credentials is not None:
            credentials.apply(headers)
        request = urllib.request.Request(  # noqa: S310 - loopback
            url, data=b"", method="POST", headers=headers
        )
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

    # --- images -----------------------------------------------------------------------------
    def list_images(self, family: str | None = None) -> list[ImageInfo]:
        client = self._client("ImagesClient")
        request: dict[str, Any] = {"project": self.project}
        if family:
            request["filter"] = f'family = "{family}"'
        images = self._call(client.list, "global", _image_error, request=request)
        found = [image_info(image) for image in images]
        if family:
            # A filter is a hint some servers ignore; the family is what counts.
            found = [info for info in found if info.family == family]
        return newest_first(found)

    def newest_image(self, family: str) -> ImageInfo | None:
        client = self._client("ImagesClient")
        try:
            image = self._call(
                client.get_from_family, "global", project=self.project, family=family
            )
        except api_exceptions().NotFound:
            return None
        return image_info(image)

    def image_from_family(self, family: str) -> str:
        image = self.newest_image(family)
        if image is None:
            raise ConfigError(
                f"no image in family {family!r} of project {self.project}: run `invoke bake-image` "
                "(on localgce `make demo` registers one) or set survival.image_family"
            )
        return image.self_link or f"projects/{self.project}/global/images/{image.name}"

    def deprecate_image(
        self, name: str, *, state: str = "DEPRECATED", replacement: str = ""
    ) -> None:
        if state not in IMAGE_STATES:
            raise ImageError(f"state {state!r}: choose {', '.join(IMAGE_STATES)}")
        status: dict[str, Any] = {"state": state}
        if replacement:
            status["replacement"] = (
                f"projects/{self.project}/global/images/{replacement}"
                if "/" not in replacement
                else replacement
            )
        client = self._client("ImagesClient")
        op = self._call(
            client.deprecate_unary,
            "global",
            _image_error,
            project=self.project,
            image=name,
            deprecation_status_resource=status,
        )
        self._wait(op, None)

    def insert_local_image(
        self, name: str, family: str, source_dir: str, labels: dict[str, str] | None = None
    ) -> None:
        body = {
            "name": name,
            "family": family,
            "raw_disk": {"source": source_dir},
            "labels": labels or {},
            "description": "GCE Survival Kit local image (invoke bake-image --backend local)",
        }
        client = self._client("ImagesClient")
        op = self._call(
            client.insert_unary, "global", _image_error, project=self.project, image_resource=body
        )
        self._wait(op, None)

    # --- project metadata -------------------------------------------------------------------
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
