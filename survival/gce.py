"""`survival.compute.Compute` on google-cloud-compute: real GCE, or localgce via ``api_endpoint``.

The one adaptor between the kit and the Compute API: instances, images and project metadata. The
SDK is imported lazily (``invoke --list`` stays instant) and its clients are built here only.
Mutating calls use the ``*_unary`` methods and wait on the returned Operation in `_wait`, through a
Zone/GlobalOperationsClient built with the *same* client options: ``ExtendedOperation.result()``
would poll compute.googleapis.com whatever the endpoint (docs/gce-behaviour.md, "Waiting on
operations from Python"), and it hides the operation's error codes we classify on. `_wait` calls
the operations' ``wait`` method, which blocks server-side for up to about two minutes, so one
operation costs one or two calls instead of a ``get`` every half second.
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
    QuotaError,
    RateLimited,
    SurvivalError,
    TransientError,
    classify_http_error,
    classify_operation_error,
    transport_errors,
)
from survival.images import ImageInfo, image_info, newest_first
from survival.sdk import api_exceptions, compute_v1, make_client

# A wait that comes back early (the server may answer before its ~2 minute deadline) and not
# DONE is repeated after this pause, so a server that always answers at once is not hammered.
OPERATION_POLL_SECONDS = 1.0
OPERATION_TIMEOUT_SECONDS = 900.0
# A rate-limited wait is retried after this pause, doubling up to the maximum.
WAIT_RATE_LIMIT_BACKOFF_SECONDS = 2.0
WAIT_RATE_LIMIT_BACKOFF_MAX_SECONDS = 60.0
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
    known = classify_http_error(where, err)
    if known is not None:
        # Rate limits and quotas come as 403, a start while STOPPING as 400: not config errors.
        return known
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


def _quotas(raw: dict[str, Any]) -> dict[str, tuple[float, float]]:
    return {
        str(q["metric"]): (float(q.get("limit", 0)), float(q.get("usage", 0)))
        for q in raw.get("quotas") or []
        if q.get("metric")
    }


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.project = project
        self._client_kwargs = dict(client_kwargs or {})
        self._extension_url = extension_url
        self._poll_seconds = poll_seconds
        self._timeout_seconds = timeout_seconds
        self._sleep = sleep
        self._clock = clock
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
            if isinstance(err, exc.ServerError) and not isinstance(err, exc.MethodNotImplemented):
                # any other 5xx but 501 (a method the server does not have): transient too
                raise TransientError(f"{where}: {err.message}") from err
            mapped = translate(where, err, exc)
            if mapped is None:
                raise
            if isinstance(mapped, QuotaError):
                mapped = self.quota_with_numbers(mapped)
            raise mapped from err
        except transport_errors() as err:
            # Refused/reset connections, DNS failures, timeouts: the API did not answer at all.
            raise TransientError(
                f"{where}: cannot reach the Compute API ({type(err).__name__})"
            ) from err

    def _wait(self, operation: Any, zone: str | None) -> None:
        """Wait for DONE with zoneOperations.wait / globalOperations.wait (server-side, up to
        about 2 minutes a call; repeated until DONE) through an operations client on our
        endpoint; then raise the operation's errors."""
        where = zone or "global"
        if zone:
            client = self._client("ZoneOperationsClient")
            scope: dict[str, Any] = {"project": self.project, "zone": zone}
        else:
            client = self._client("GlobalOperationsClient")
            scope = {"project": self.project}
        done = compute_v1().Operation.Status.DONE
        deadline = self._clock() + self._timeout_seconds
        backoff = WAIT_RATE_LIMIT_BACKOFF_SECONDS
        while operation.status != done:
            if self._clock() > deadline:
                raise TransientError(
                    f"operation {operation.name} is not DONE after {self._timeout_seconds:g} s; "
                    "check it with `gcloud compute operations describe`"
                )
            asked = self._clock()
            try:
                operation = self._call(client.wait, where, operation=operation.name, **scope)
            except RateLimited:
                # The operation goes on whatever happens to our wait: ask again later.
                self._sleep(backoff)
                backoff = min(backoff * 2, WAIT_RATE_LIMIT_BACKOFF_MAX_SECONDS)
                continue
            if operation.status != done and self._clock() - asked < self._poll_seconds:
                self._sleep(self._poll_seconds)
        errors = list(operation.error.errors) if operation.error else []
        if errors:
            codes = [e.code for e in errors]
            message = "; ".join(e.message for e in errors if e.message)
            quota_info = None
            for entry in errors:
                for detail in _to_raw(entry).get("errorDetails") or []:
                    quota_info = quota_info or detail.get("quotaInfo")
            err = classify_operation_error(
                where, codes, operation.http_error_status_code, message, quota_info=quota_info
            )
            if isinstance(err, QuotaError):
                err = self.quota_with_numbers(err)
            raise err

    # --- quotas, accelerators, networks (read by placement errors and `invoke doctor`) -------
    def region_quotas(self, region: str) -> dict[str, tuple[float, float]]:
        """metric → (limit, usage) of a region (regions.get)."""
        client = self._client("RegionsClient")
        raw = _to_raw(self._call(client.get, region, project=self.project, region=region))
        return _quotas(raw)

    def project_quotas(self) -> dict[str, tuple[float, float]]:
        """metric → (limit, usage) of the project's global quotas (projects.get)."""
        client = self._client("ProjectsClient")
        return _quotas(_to_raw(self._call(client.get, "global", project=self.project)))

    def quota_with_numbers(self, err: QuotaError) -> QuotaError:
        """``err`` with the quota's limit and usage as regions.get / projects.get report them
        (unchanged when they cannot be read)."""
        try:
            quotas = self.region_quotas(err.region) if err.region else self.project_quotas()
        except Exception:  # the numbers are a courtesy: never hide the quota error itself
            return err
        if err.metric not in quotas:
            return err
        limit, usage = quotas[err.metric]
        return err.with_numbers(limit, usage)

    def accelerator_types(self, zone: str) -> list[str]:
        """Names of the accelerator types a zone offers (acceleratorTypes.list)."""
        client = self._client("AcceleratorTypesClient")
        found = self._call(client.list, zone, project=self.project, zone=zone)
        return sorted(accelerator.name for accelerator in found)

    def default_service_account(self) -> str:
        """The project's default service account email (projects.get)."""
        client = self._client("ProjectsClient")
        return str(self._call(client.get, "global", project=self.project).default_service_account)

    def get_network(self, name: str) -> dict[str, Any] | None:
        """The VPC network (networks.get), or None when it does not exist."""
        client = self._client("NetworksClient")
        try:
            return _to_raw(self._call(client.get, "global", project=self.project, network=name))
        except api_exceptions().NotFound:
            return None

    def get_subnetwork(self, region: str, name: str) -> dict[str, Any] | None:
        """The subnetwork (subnetworks.get), or None when it does not exist."""
        client = self._client("SubnetworksClient")
        try:
            raw = self._call(
                client.get, region, project=self.project, region=region, subnetwork=name
            )
        except api_exceptions().NotFound:
            return None
        return _to_raw(raw)

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

    def system_events(self, zone: str, instance_id: str) -> list[tuple[str, str]]:
        # One call, only when a VM is found stopped: operations are not kept for ever, so an
        # old stop may have none (docs/gce-behaviour.md, "Why a VM stopped: system events").
        client = self._client("ZoneOperationsClient")
        request = compute_v1().ListZoneOperationsRequest(
            project=self.project, zone=zone, filter=f'targetId = "{instance_id}"',
            order_by="creationTimestamp desc",
        )  # fmt: skip
        pages = self._call(client.list, zone, request=request)
        events = [(op.operation_type, op.insert_time) for op in pages if op.user == "system"]
        return sorted(events, key=lambda event: event[1], reverse=True)

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
        try:
            out = self._call(
                client.get_serial_port_output,
                zone,
                request={"project": self.project, "zone": zone, "instance": name, "port": 1,
                         "start": start},
            )  # fmt: skip
        except api_exceptions().NotFound:
            # Gone (deleted at a preemption or at the end of its run duration): no more output.
            return "", start
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
