"""`invoke doctor`: the preflight checks, run before any money is spent.

Each check is a `Check` row, ✓ or ✗, and a ✗ says how to fix it: credentials and project, the
Compute and Cloud Storage APIs, the GPU quotas (the region's GPU-type quota and GPUS_ALL_REGIONS
against the request), the GPU type in each configured zone, the image family, the job bucket and
write access to it, the network, and the VM's way out (an external IP, or a subnetwork with
Private Google Access). `invoke train` runs the same checks first, on both backends (on localgce
they cost a few local calls), and refuses on any ✗ before anything is pushed or created.

How the facts behind each check were established, with sources: docs/gce-behaviour.md,
"Preflight: what `invoke doctor` reads".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from survival.compute import Compute
from survival.config import Settings
from survival.errors import QUOTA_INCREASE_URL, SurvivalError, error_reasons, region_of

GLOBAL_GPU_METRIC = "GPUS_ALL_REGIONS"
BUCKET_PERMISSIONS = ("storage.objects.create", "storage.objects.get")
BUCKET_ROLE = "roles/storage.objectUser"
# GPU types whose quota metric does not follow NVIDIA_<model>_GPUS of the type name.
_METRIC_EXCEPTIONS = {
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_GPUS",
    "nvidia-h200-141gb": "NVIDIA_H200_GPUS",
}
_DISABLED_REASONS = {"accessNotConfigured", "SERVICE_DISABLED"}


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table. ``fix`` is what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def gpu_quota_metric(gpu_type: str) -> str:
    """``nvidia-tesla-t4`` → ``NVIDIA_T4_GPUS`` (the metric regions.get lists)."""
    if gpu_type in _METRIC_EXCEPTIONS:
        return _METRIC_EXCEPTIONS[gpu_type]
    model = gpu_type.removeprefix("nvidia-").removeprefix("tesla-")
    return f"NVIDIA_{model.upper().replace('-', '_')}_GPUS"


def _unwrap(err: BaseException) -> BaseException:
    """The API's own exception behind one of ours (its reasons say 'API disabled')."""
    return err.__cause__ if isinstance(err, SurvivalError) and err.__cause__ else err


def _api_disabled(err: BaseException) -> bool:
    cause = _unwrap(err)
    text = str(cause)
    return bool(_DISABLED_REASONS & set(error_reasons(cause))) or (
        "has not been used in project" in text or "it is disabled" in text
    )


def _short(err: BaseException) -> str:
    text = str(getattr(_unwrap(err), "message", "") or _unwrap(err)) or type(err).__name__
    line = text.splitlines()[0] if text else ""
    return line[:160]


@dataclass
class Doctor:
    """Runs the checks for ``settings`` with ``compute`` and ``storage`` (a
    google.cloud.storage.Client, or None when it could not be made)."""

    settings: Settings
    compute: Compute
    storage: Any = None
    credentials: Callable[[], Check] | None = None

    def run(self) -> list[Check]:
        checks = [self.credentials() if self.credentials else _local_credentials()]
        compute_ok = self._compute_api(checks)
        if compute_ok:
            checks += self._gpu_quotas()
            checks += self._accelerators()
            checks.append(self._image_family())
            network_check, network = self._network()
            checks.append(network_check)
            checks += self._egress(network)
        checks += self._bucket()
        return checks

    # --- project and Compute API ------------------------------------------------------------
    def _compute_api(self, checks: list[Check]) -> bool:
        project = self.settings.project
        try:
            self.compute.project_quotas()
        except Exception as err:
            if _api_disabled(err):
                fix = f"gcloud services enable compute.googleapis.com --project {project}"
            elif "not found" in str(err).lower():
                fix = "check survival.project: `gcloud projects list` shows your projects"
            else:
                fix = (
                    "check survival.project and that your account may use Compute Engine "
                    "(roles/compute.instanceAdmin.v1)"
                )
            checks.append(Check(f"project {project}, Compute API", False, _short(err), fix))
            return False
        checks.append(Check(f"project {project}, Compute API", True, "reachable"))
        return True

    # --- GPUs -------------------------------------------------------------------------------
    def _regions(self) -> list[str]:
        return list(dict.fromkeys(region_of(zone) for zone in self.settings.zones))

    def _gpu_quotas(self) -> list[Check]:
        s = self.settings
        if not s.gpu_count:
            return [Check("GPU quota", True, "no GPU requested")]
        wanted = s.gpu_count
        metric = gpu_quota_metric(s.gpu_type)
        rows = []
        for region in self._regions():
            name = f"GPU quota {region}"
            try:
                quotas = self.compute.region_quotas(region)
            except Exception as err:
                rows.append(Check(name, False, _short(err), "check survival.zones"))
                continue
            used = metric
            preemptible = f"PREEMPTIBLE_{metric}"
            # Spot and preemptible VMs count against the preemptible quota when the project
            # has one, and against the standard quota otherwise.
            if s.provisioning != "standard" and quotas.get(preemptible, (0.0, 0.0))[0] > 0:
                used = preemptible
            if used not in quotas:
                rows.append(
                    Check(
                        name,
                        False,
                        f"{region} lists no quota {metric}",
                        f"pick another GPU type or region, or request {metric} at "
                        f"{QUOTA_INCREASE_URL}",
                    )
                )
                continue
            rows.append(_quota_row(name, used, region, quotas[used], wanted))
        try:
            global_quotas = self.compute.project_quotas()
        except Exception as err:
            rows.append(Check(f"GPU quota {GLOBAL_GPU_METRIC}", False, _short(err), ""))
            return rows
        if GLOBAL_GPU_METRIC in global_quotas:
            rows.append(
                _quota_row(
                    f"GPU quota {GLOBAL_GPU_METRIC}",
                    GLOBAL_GPU_METRIC,
                    None,
                    global_quotas[GLOBAL_GPU_METRIC],
                    wanted,
                )
            )
        else:
            rows.append(Check(f"GPU quota {GLOBAL_GPU_METRIC}", True, "not listed: no cap"))
        return rows

    def _accelerators(self) -> list[Check]:
        s = self.settings
        if not s.gpu_count:
            return []
        rows = []
        for zone in s.zones:
            name = f"{s.gpu_type} in {zone}"
            try:
                offered = self.compute.accelerator_types(zone)
            except Exception as err:
                rows.append(Check(name, False, _short(err), "check survival.zones"))
                continue
            if s.gpu_type in offered:
                rows.append(Check(name, True, "offered"))
                continue
            others = ", ".join(t for t in offered if t.startswith("nvidia-")) or "no GPUs"
            rows.append(
                Check(
                    name,
                    False,
                    f"{zone} does not offer {s.gpu_type} (it offers: {others})",
                    f"remove {zone} from survival.zones, or choose a GPU type it offers (--gpu)",
                )
            )
        return rows

    # --- image, network ---------------------------------------------------------------------
    def _image_family(self) -> Check:
        family = self.settings.image_family
        name = f"image family {family}"
        bake = (
            "`invoke bake-image --backend local` (or `make demo`)"
            if self.settings.is_local
            else "`invoke bake-image --backend gce`"
        )
        try:
            newest = self.compute.newest_image(family)
            if newest is not None:
                return Check(name, True, f"newest {newest.name}")
            images = self.compute.list_images(family)
        except Exception as err:
            return Check(name, False, _short(err), f"bake one: {bake}")
        if images:
            return Check(
                name,
                False,
                f"all {len(images)} images of {family} are deprecated",
                f"bake a new one: {bake}, or un-deprecate one (images.deprecate with state ACTIVE)",
            )
        return Check(
            name,
            False,
            f"no image in family {family} of {self.settings.project}",
            f"bake one: {bake}, or set survival.image_family",
        )

    def _network(self) -> tuple[Check, dict[str, Any] | None]:
        """The network row, and the network (networks.get) when it exists."""
        network = self.settings.network or "default"
        name = f"network {network}"
        try:
            found = self.compute.get_network(network)
        except Exception as err:
            return Check(name, False, _short(err), "check survival.network"), None
        if found is None:
            fix = (
                f"create it (`gcloud compute networks create {network} --subnet-mode=auto`) "
                "or set survival.network"
            )
            return Check(name, False, f"no network {network} in {self.settings.project}", fix), None
        auto = found.get("autoCreateSubnetworks")
        if auto is False and not self.settings.subnetwork:
            # instances.insert requires a subnetwork on a custom-mode network.
            return (
                Check(
                    name,
                    False,
                    f"{network} is a custom-mode network: a VM on it needs a subnetwork",
                    "set survival.subnetwork to its subnetwork in the zones' region",
                ),
                found,
            )
        mode = {True: "auto mode", False: "custom mode"}.get(auto)
        return Check(name, True, f"exists ({mode})" if mode else "exists"), found

    def _egress(self, network: dict[str, Any] | None) -> list[Check]:
        """The VM's way to Cloud Storage: an external IP, or a subnetwork with Private Google
        Access: survival.subnetwork, else the auto-mode network's own subnetwork (named after
        the network) in each region of the zones. A configured subnetwork must exist (in the
        network) either way."""
        s = self.settings
        regions = self._regions()
        if s.external_ip:
            rows = [
                Check(
                    "egress",
                    True,
                    "ephemeral external IP (unless the org policy "
                    "constraints/compute.vmExternalIpAccess denies it)",
                )
            ]
            if s.subnetwork:
                rows += [self._subnetwork(r, s.subnetwork, needs_pga=False) for r in regions]
            return rows
        subnetwork = s.subnetwork
        if not subnetwork and network is not None and network.get("autoCreateSubnetworks"):
            subnetwork = str(network.get("name") or s.network)
        if not subnetwork:
            return [
                Check(
                    "egress",
                    False,
                    "external_ip is false and no subnetwork is set: the VM cannot reach "
                    "Cloud Storage",
                    "set survival.subnetwork to a subnet with Private Google Access, or "
                    "external_ip: true",
                )
            ]
        return [self._subnetwork(region, subnetwork, needs_pga=True) for region in regions]

    def _subnetwork(self, region: str, subnetwork: str, needs_pga: bool) -> Check:
        name = f"subnetwork {subnetwork} ({region})"
        try:
            found = self.compute.get_subnetwork(region, subnetwork)
        except Exception as err:
            return Check(name, False, _short(err), "check survival.subnetwork")
        if found is None:
            return Check(
                name,
                False,
                f"no subnetwork {subnetwork} in {region}",
                "create it in every region of survival.zones, or set survival.subnetwork",
            )
        owner = str(found.get("network") or "").rstrip("/").rsplit("/", 1)[-1]
        network = self.settings.network or "default"
        if owner and owner != network:
            return Check(
                name,
                False,
                f"subnetwork {subnetwork} belongs to network {owner}, not {network}",
                f"set survival.network: {owner}, or a subnetwork of {network}",
            )
        if not needs_pga:
            return Check(name, True, "exists")
        if not found.get("privateIpGoogleAccess"):
            return Check(
                name,
                False,
                "Private Google Access is off: without an external IP the VM cannot "
                "reach Cloud Storage",
                f"gcloud compute networks subnets update {subnetwork} --region {region} "
                "--enable-private-ip-google-access (or external_ip: true)",
            )
        return Check(name, True, "Private Google Access on")

    # --- bucket -----------------------------------------------------------------------------
    def _bucket(self) -> list[Check]:
        s = self.settings
        bucket_url = f"gs://{s.job_bucket}"
        if self.storage is None:
            return [Check(f"bucket {bucket_url}", False, "no storage client", "see credentials")]
        try:
            bucket = self.storage.lookup_bucket(s.job_bucket)
        except Exception as err:
            fix = (
                f"gcloud services enable storage.googleapis.com --project {s.project}"
                if _api_disabled(err)
                else "check survival.job_bucket and your account's Cloud Storage access"
            )
            return [Check(f"Storage API, bucket {bucket_url}", False, _short(err), fix)]
        if bucket is None:
            return [
                Check(
                    f"Storage API, bucket {bucket_url}",
                    False,
                    "does not exist",
                    f"gcloud storage buckets create {bucket_url} --project {s.project} "
                    f"--location {self._regions()[0]}, or set survival.job_bucket",
                )
            ]
        rows = [Check(f"Storage API, bucket {bucket_url}", True, "exists")]
        rows.append(self._bucket_writable(bucket))
        return rows

    def _service_account(self) -> str:
        account = self.settings.service_account
        if account and account != "default":
            return account
        try:
            return self.compute.default_service_account() or "the default service account"
        except Exception:
            return "the default service account"

    def _bucket_writable(self, bucket: Any) -> Check:
        name = f"write gs://{bucket.name}"
        missing = _missing_permissions(bucket)
        if not missing:
            return Check(name, True, f"{', '.join(BUCKET_PERMISSIONS)} granted")
        account = self._service_account()
        return Check(
            name,
            False,
            f"missing {', '.join(missing)}",
            f"grant {account} {BUCKET_ROLE} on gs://{bucket.name}: `gcloud storage buckets "
            f"add-iam-policy-binding gs://{bucket.name} --member=serviceAccount:{account} "
            f"--role={BUCKET_ROLE}` (organizations that enforce "
            "iam.automaticIamGrantsForDefaultServiceAccounts give the default service account "
            "no roles)",
        )


def _missing_permissions(bucket: Any) -> list[str]:
    """The BUCKET_PERMISSIONS the caller lacks on ``bucket`` (buckets.testIamPermissions; on
    localgce its storage guard answers it)."""
    try:
        granted = set(bucket.test_iam_permissions(list(BUCKET_PERMISSIONS)))
    except Exception as err:
        return [f"{', '.join(BUCKET_PERMISSIONS)} ({_short(err)})"]
    return [p for p in BUCKET_PERMISSIONS if p not in granted]


def _quota_row(
    name: str, metric: str, region: str | None, numbers: tuple[float, float], wanted: int
) -> Check:
    limit, usage = numbers
    free = limit - usage
    detail = f"{metric}: limit {limit:g}, usage {usage:g}, this job needs {wanted}"
    if free >= wanted:
        return Check(name, True, detail)
    where = f" in {region}" if region else ""
    return Check(
        name,
        False,
        detail,
        f"request more {metric}{where} at {QUOTA_INCREASE_URL}, or ask for fewer GPUs (--gpu)",
    )


def _local_credentials() -> Check:
    return Check("credentials", True, "localgce's API token")


def adc_credentials(project: str) -> Check:
    """Application Default Credentials, as the SDK clients find them."""
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:  # pragma: no cover - a pinned dependency
        return Check("credentials (ADC)", False, "google-auth is missing", "run `make setup`")
    try:
        credentials, adc_project = google.auth.default()
    except DefaultCredentialsError:
        return Check(
            "credentials (ADC)",
            False,
            "no Application Default Credentials",
            "gcloud auth application-default login (or set GOOGLE_APPLICATION_CREDENTIALS)",
        )
    kind = type(credentials).__name__
    note = f"; ADC's own project is {adc_project}" if adc_project and adc_project != project else ""
    return Check("credentials (ADC)", True, f"{kind}{note}")


def failures(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if not check.ok]


def print_checks(checks: list[Check], print_fn: Callable[[Any], None] | None = None) -> None:
    """One rich table: ✓/✗, what was checked, what was found, and the fix for each ✗."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="survival doctor")
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    # Folded, never cut with an ellipsis: fixes hold commands and links to copy.
    table.add_column("found", overflow="fold")
    table.add_column("fix", overflow="fold")
    for check in checks:
        mark = "[green]✓[/green]" if check.ok else "[red]✗[/red]"
        table.add_row(mark, check.name, check.detail, check.fix)
    (print_fn or Console(width=160).print)(table)


def check_batch(settings: Settings, batch: Any = None) -> Check:
    """`--engine batch`: the Batch API answers a jobs.list in the jobs' region (the region of the
    first zone). ``batch``: a survival.batch_engine.BatchJobs (made from ``settings`` if None)."""
    from survival.batch_engine import batch_for, location_of

    project = settings.project
    name = f"Batch API ({location_of(settings.zones)})"
    try:
        (batch or batch_for(settings)).probe()
    except Exception as err:
        if _api_disabled(err):
            fix = f"gcloud services enable batch.googleapis.com --project {project}"
        else:
            fix = (
                "grant your account roles/batch.jobsEditor, and roles/iam.serviceAccountUser on "
                "the VMs' service account (survival.service_account)"
            )
        return Check(name, False, _short(err), fix)
    return Check(name, True, "reachable (the VMs' service account needs roles/batch.agentReporter)")


def check_cloud(settings: Settings, compute: Compute, storage: Any) -> list[Check]:
    """The checks with clients already made (`invoke train`'s preflight)."""
    credentials = None if settings.is_local else (lambda: adc_credentials(settings.project))
    return Doctor(settings, compute, storage, credentials).run()


def diagnose(settings: Settings, engine: str = "vms") -> list[Check]:
    """`invoke doctor`: make the clients (never starting localgce: looking changes nothing),
    then run every check (with ``engine`` batch, the Batch API's too). Failing to make a client
    is a ✗ row, not an exception."""
    from survival.backend import compute_for, local_endpoints, storage_client

    endpoints = None
    if settings.is_local:
        try:
            endpoints = local_endpoints(settings.local_state_dir, start=False)
        except SurvivalError as err:
            return [Check("localgce", False, "not running", str(err).split(": ", 1)[-1])]
    compute = compute_for(settings.project, endpoints)
    try:
        storage = storage_client(settings.project, endpoints and endpoints["storage"])
    except Exception:  # no ADC: the credentials row says what to run
        storage = None
    checks = check_cloud(settings, compute, storage)
    if engine == "batch":
        checks.append(check_batch(settings))
    if settings.is_local:
        # On localgce `invoke train` creates the job bucket: a missing one is no fault here.
        checks = [
            Check(c.name, True, "absent; `invoke train` creates it on localgce")
            if c.name.startswith("Storage API, bucket") and c.detail == "does not exist"
            else c
            for c in checks
        ]
    return checks
