"""Instance lifecycle: boot, the shutdown path, preemption, host maintenance, guest shutdown.

Threads and locks:
- Each instance has a `Machine` whose `lock` serialises its transitions (boot, shutdown, delete).
  Take a Machine lock before `Store.lock`, never the other way round.
- A boot starts the instance's metadata server (a thread in the daemon), its sshd (a process
  group) and a `GuestAgent` thread that runs the startup scripts (a process group each).
- Every stop (API stop and delete, preemption, host maintenance, guest `shutdown`/`reboot`) is
  `_stop_boot`: status STOPPING, shutdown scripts start, SIGTERM to everything else of the boot,
  wait until all of it has exited or the grace window (30 s Spot/preemptible, 120 s standard;
  knobs) has passed, SIGKILL the rest, then TERMINATED, deleted, or booted again (`Then`).
  Processes are found by group and by the LOCALGCE_GUEST marker (procs.py), so nothing outlives
  its instance.
- Preemption, maintenance and guest shutdowns stop the boot from a thread of their own, so the
  call that asked for them answers at once; `preempted=TRUE` and the maintenance notice are set
  before that thread starts, so the guest sees them before any signal. The thread names the boot
  it stops: a stop decided for one boot never hits the next one.
- A ticker thread preempts RUNNING Spot VMs at random when `preemption_rate_per_hour` > 0.
- A Spot VM with `scheduling.preemptionNoticeDuration` shows `preempted=TRUE` for that long
  before its preemption's soft-off (a thread waits it out, then stops that boot).
- A boot of a VM with a time limit (`maxRunDuration` from the boot's start, or `terminationTime`)
  gets a timer thread: at the limit the boot goes down the same stop path, then
  `instanceTerminationAction` (STOP: TERMINATED; DELETE: gone). `preempted` stays FALSE.
- `close()` (daemon stop) kills every guest process quickly and leaves statuses as they are;
  `resume()` (daemon start) sweeps leftovers of a crashed daemon and boots RUNNING instances again,
  as a host reboot would.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from localgce import links, procs
from localgce.errors import already_exists, invalid, not_found, not_ready
from localgce.guest import GuestAgent, guest_env, write_shims
from localgce.httpserver import RunningServer, start_server
from localgce.instance_resource import (
    InstanceSpec,
    duration_seconds,
    is_spot,
    metadata_dict,
    new_instance,
    parse_rfc3339,
)
from localgce.metadata_server import MetadataServer, build_tree
from localgce.operations import GUEST_TERMINATE, record_system_event
from localgce.serial import SerialPort
from localgce.ssh import Sshd, parse_ssh_keys, sshd_binary, write_authorized_keys
from localgce.state import InstanceKey, InstanceRecord, Status, Store

log = logging.getLogger("localgce.lifecycle")
QUICK_KILL_SECONDS = 2.0
CHAOS_TICK_SECONDS = 1.0
RUN_LIMIT_CHECK_SECONDS = 5.0
AGENT_JOIN_SECONDS = 2.0
KERNEL_IDENT = "localgce"
MIGRATE_EVENT = "MIGRATE_ON_HOST_MAINTENANCE"
TERMINATE_EVENT = "TERMINATE_ON_HOST_MAINTENANCE"


class Then(StrEnum):
    """What follows a stop once the boot is off."""

    TERMINATE = "terminate"  # TERMINATED, disk kept
    DELETE = "delete"  # the instance and its disk are gone
    RESTART = "restart"  # TERMINATED, then booted again


def after_preemption(resource: dict) -> Then:
    """`instanceTerminationAction`: STOP (the default) keeps the VM, DELETE deletes it."""
    action = resource["scheduling"].get("instanceTerminationAction", "STOP")
    return Then.DELETE if action == "DELETE" else Then.TERMINATE


def rfc3339(unix: float) -> str:
    """RFC 3339 with milliseconds and a numeric offset, as Store.timestamp writes the present."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix))
    return f"{whole}.{int((unix % 1) * 1000):03d}-00:00"


def preemption_notice_seconds(resource: dict) -> float:
    """How long `preempted` shows TRUE before a preemption's soft-off (0: none; Spot only)."""
    sched = resource.get("scheduling", {})
    notice = sched.get("preemptionNoticeDuration")
    if not notice or sched.get("provisioningModel") != "SPOT":
        return 0.0
    return duration_seconds("preemptionNoticeDuration", notice)


def run_limit_seconds(resource: dict, now_unix: float) -> float | None:
    """Seconds from now (a boot's start) to the end of its time limit; None: no limit."""
    sched = resource.get("scheduling", {})
    if sched.get("maxRunDuration"):
        return duration_seconds("maxRunDuration", sched["maxRunDuration"])
    if sched.get("terminationTime"):
        moment = parse_rfc3339(sched["terminationTime"])
        return None if moment is None else max(0.0, moment - now_unix)
    return None


def after_maintenance(resource: dict) -> Then:
    """A VM stopped for host maintenance comes back only with `automaticRestart`."""
    return Then.RESTART if resource["scheduling"].get("automaticRestart") else Then.TERMINATE


@dataclass
class Machine:
    key: InstanceKey
    lock: threading.RLock = field(default_factory=threading.RLock)
    metadata: RunningServer | None = None
    metadata_app: MetadataServer | None = None
    sshd: Sshd | None = None
    agent: GuestAgent | None = None
    serial: SerialPort | None = None
    marker: str = ""  # "<tag>:<instance id>:<boot>:" — every process of this boot carries it
    groups: list[int] = field(default_factory=list)


def daemon_tag(state_dir: Path) -> str:
    """Same tag across restarts of one state dir: a new daemon can sweep an old one's leftovers."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]


class Lifecycle:
    def __init__(
        self,
        store: Store,
        state_dir: Path,
        storage_url: str,
        ssh_enabled: bool = True,
        quick_kill_seconds: float = QUICK_KILL_SECONDS,
        chaos_tick_seconds: float = CHAOS_TICK_SECONDS,
    ):
        self.store = store
        self.state_dir = Path(state_dir).resolve()
        self.storage_url = storage_url
        self.ssh_enabled = ssh_enabled and sshd_binary() is not None
        self.quick_kill_seconds = quick_kill_seconds
        self.chaos_tick_seconds = chaos_tick_seconds
        self.tag = daemon_tag(self.state_dir)
        self.machines: dict[InstanceKey, Machine] = {}
        self._machines_lock = threading.Lock()
        self._closing = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- helpers ---------------------------------------------------------------------------
    def machine(self, key: InstanceKey) -> Machine:
        with self._machines_lock:
            m = self.machines.get(key)
            if m is None:
                m = self.machines[key] = Machine(key=key)
            return m

    def instance_dir(self, rec: InstanceRecord) -> Path:
        return self.state_dir / "instances" / rec.resource["id"]

    def _record(self, key: InstanceKey) -> InstanceRecord | None:
        return self.store.instances.get(key)

    def _running(self, key: InstanceKey, why: str) -> InstanceRecord:
        """The record of a RUNNING instance, else 404 or 400 saying `why` (store lock held)."""
        rec = self._record(key)
        if rec is None:
            raise not_found(links.instance_path(*key))
        if rec.status != Status.RUNNING:
            raise not_ready(f"Instance '{key.name}' is {rec.status}; {why}.")
        return rec

    def serial(self, key: InstanceKey) -> SerialPort:
        m = self.machine(key)
        if m.serial is None:
            with self.store.lock:
                rec = self._record(key)
                base = rec.guest.get("serialBase", 0)
                path = self.instance_dir(rec) / "serial-port-1.log"

            def on_base_change(new_base: int) -> None:
                with self.store.lock:
                    current = self._record(key)
                    if current is not None:
                        current.guest["serialBase"] = new_base
                        self.store.commit()

            path.parent.mkdir(parents=True, exist_ok=True)
            m.serial = SerialPort(
                path, base=base, clock=self.store.clock, on_base_change=on_base_change
            )
        return m.serial

    def _console(self, key: InstanceKey, text: str) -> None:
        self.serial(key).line(key.name, KERNEL_IDENT, 1, text)

    def _set(self, key: InstanceKey, **changes) -> InstanceRecord | None:
        """Update resource fields (camelCase) or guest facts (prefixed `guest_`) and commit."""
        with self.store.lock:
            rec = self._record(key)
            if rec is None:
                return None
            for name, value in changes.items():
                if name.startswith("guest_"):
                    rec.guest[name[len("guest_") :]] = value
                else:
                    rec.resource[name] = value
            self.store.commit()
            return rec

    def grace_seconds(self, resource: dict) -> float:
        knobs = self.store.knobs
        return knobs.grace_spot_seconds if is_spot(resource) else knobs.grace_standard_seconds

    # --- create and boot ------------------------------------------------------------------------
    def create(self, spec: InstanceSpec, image: dict) -> InstanceRecord:
        """The new instance's record, not booted yet; 409 if its name is taken."""
        with self.store.lock:
            if spec.key in self.store.instances:
                raise already_exists(links.instance_path(*spec.key))
            rec = new_instance(self.store, spec, image)
            rec.guest["disk"] = str(self.instance_dir(rec) / "disk")
            self.store.instances[spec.key] = rec
            self.store.commit()
            return rec

    # --- boot --------------------------------------------------------------------------------
    def boot(self, key: InstanceKey) -> None:
        """TERMINATED/new → PROVISIONING → STAGING → RUNNING, guest agent started."""
        m = self.machine(key)
        with m.lock:
            with self.store.lock:
                rec = self._record(key)
                if rec is None or rec.status == Status.RUNNING:
                    return
                boot_number = rec.guest.get("boot", 0) + 1
                rec.resource["status"] = Status.PROVISIONING
                rec.guest.update(boot=boot_number, preempted=False, maintenanceEvent="NONE")
                self.store.commit()
                inst_dir = self.instance_dir(rec)
                disk = Path(rec.guest["disk"])
                image_dir = rec.guest.get("imageDir")
                project = rec.guest["project"]
            disk.mkdir(parents=True, exist_ok=True)
            m.marker = f"{self.tag}:{rec.resource['id']}:{boot_number}:"
            m.groups = []
            self._set(key, status=Status.STAGING)
            shutdown_secret = secrets.token_hex(16)
            m.metadata_app = MetadataServer(
                self.store,
                tree=lambda: build_tree(self.store, key),
                guest_shutdown=lambda action: self.guest_shutdown(key, action),
                key=key,
                shutdown_secret=shutdown_secret,
            )
            m.metadata = start_server(m.metadata_app, name=f"metadata-{key.name}")
            hostport = f"127.0.0.1:{m.metadata.port}"
            bin_dir = inst_dir / "guest-bin"
            write_shims(bin_dir, m.metadata.url, shutdown_secret)
            env = guest_env(
                disk=disk,
                bin_dir=bin_dir,
                image_dir=image_dir,
                metadata_hostport=hostport,
                storage_url=self.storage_url,
                project=project,
                marker=m.marker + "main",
            )
            self._console(
                key, f"Booting {key.name} (boot {boot_number}); metadata server {hostport}"
            )
            ssh_port = None
            if self.ssh_enabled:
                ssh_port = self._start_sshd(key, m, inst_dir, env)
            with self.store.lock:
                rec = self._record(key)
                rec.resource["status"] = Status.RUNNING
                rec.resource["lastStartTimestamp"] = self.store.timestamp()
                rec.guest.update(metadataPort=m.metadata.port, sshPort=ssh_port)
                now = self.store.clock()
                limit_seconds = run_limit_seconds(rec.resource, now)
                if limit_seconds is not None:
                    # Output only on GCE: when the running VM's time limit ends.
                    rec.resource["resourceStatus"] = {
                        "scheduling": {"terminationTimestamp": rfc3339(now + limit_seconds)}
                    }
                self.store.commit()
            if limit_seconds is not None:
                self._in_thread("run-limit", key, self._end_run_limit, boot_number, limit_seconds)
            shutdown_env = dict(env, **{procs.MARKER_VAR: m.marker + "shutdown"})
            m.agent = GuestAgent(
                host=key.name,
                disk=disk,
                env=env,
                shutdown_env=shutdown_env,
                serial=self.serial(key),
                storage_url=self.storage_url,
                attributes=lambda: self._attributes(key),
                on_group=m.groups.append,
            )
            m.agent.start()

    def _attributes(self, key: InstanceKey) -> tuple[dict[str, str], dict[str, str]]:
        with self.store.lock:
            rec = self._record(key)
            if rec is None:
                return {}, {}
            project = self.store.project(key.project)
            return (
                metadata_dict(rec.resource.get("metadata", {})),
                metadata_dict(project["commonInstanceMetadata"]),
            )

    def _start_sshd(self, key: InstanceKey, m: Machine, inst_dir: Path, env: dict) -> int | None:
        session_env = {
            k: v for k, v in env.items() if k not in ("PATH", "HOME", "USER", "LOGNAME", "SHELL")
        }
        try:
            self.refresh_ssh_keys(key)
            m.sshd = Sshd.start(inst_dir / "ssh", env, session_env)
        except Exception as exc:
            log.warning("no ssh for %s: %s", key.name, exc)
            self._console(key, f"sshd failed to start: {exc}")
            return None
        m.groups.append(m.sshd.process.pid)
        return m.sshd.port

    def refresh_ssh_keys(self, key: InstanceKey) -> None:
        """Rewrite authorized keys from metadata (after setMetadata / setCommonInstanceMetadata)."""
        if not self.ssh_enabled:
            return
        instance_attrs, project_attrs = self._attributes(key)
        with self.store.lock:
            rec = self._record(key)
            if rec is None:
                return
            ssh_dir = self.instance_dir(rec) / "ssh"
        write_authorized_keys(ssh_dir, parse_ssh_keys(instance_attrs, project_attrs))

    # --- the stop path -------------------------------------------------------------------------
    def _stop_boot(
        self,
        key: InstanceKey,
        boot: int | None,
        reason: str,
        then: Then | Callable[[dict], Then] = Then.TERMINATE,
    ) -> None:
        """Every stop: soft-off, grace window, mechanical off, then what `then` says.

        `boot`: stop only that boot, and only while it is up, because a stop decided earlier (in a
        thread, after a notice) must not hit a later boot; None: whatever runs now (API calls).
        `then` may be a function of the resource, so that scheduling fields are read when the stop
        begins, not when it was decided (setScheduling may change them in between).
        """
        m = self.machine(key)
        with m.lock:
            with self.store.lock:
                rec = self._record(key)
                if boot is not None and not _is_boot(rec, boot):
                    return
                if callable(then):
                    then = then(rec.resource)
            self._shutdown(key, reason)
            if then is Then.DELETE:
                self._remove(key)
                return
            self._terminated(key)
            if then is Then.RESTART:
                self.boot(key)

    def _in_thread(self, what: str, key: InstanceKey, target, *args) -> None:
        """Run `target(key, *args)` in a thread of its own, so the caller answers at once."""
        threading.Thread(
            target=target, args=(key, *args), name=f"{what}-{key.name}", daemon=True
        ).start()

    def _shutdown(self, key: InstanceKey, reason: str) -> None:
        """ACPI soft-off, grace window, mechanical off. Machine lock held by the caller."""
        m = self.machine(key)
        with self.store.lock:
            rec = self._record(key)
            if rec is None or rec.status == Status.TERMINATED:
                return
            grace_seconds = self.grace_seconds(rec.resource)
            rec.resource["status"] = Status.STOPPING
            self.store.commit()
        self._console(key, f"{reason}: ACPI soft-off; {grace_seconds:g} s to shut down")
        if not m.marker:
            return  # no boot of this daemon is running (e.g. a STAGING record after a crash)
        agent = m.agent
        script_thread = None
        if agent is not None:
            agent.stop_running_more()
            script_thread = agent.run_shutdown_scripts()
        main_marker = procs.marker_bytes(m.marker + "main")
        boot_marker = procs.marker_bytes(m.marker)
        # SIGTERM everything of the boot but the shutdown scripts (sshd included: it rewrites its
        # environment with setproctitle, so only its group finds it).
        groups = list(m.groups)
        shutdown_groups = set(agent.shutdown_groups) if agent else set()
        others = [g for g in groups if g not in shutdown_groups]
        procs.signal_groups(others, signal.SIGTERM)
        procs.signal_all(procs.find(others, main_marker), signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        poll = 0.02
        while time.monotonic() < deadline:
            alive = procs.find(m.groups, boot_marker, prefix_only=True)
            if not alive and not (script_thread and script_thread.is_alive()):
                break
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            poll = min(poll * 1.5, 0.25)
        self._power_off(key, m)

    def _power_off(self, key: InstanceKey, m: Machine) -> None:
        """Mechanical off: SIGKILL what is left, stop sshd and the metadata server."""
        # An empty marker would match every guest of every daemon: only sweep a real boot's.
        boot_marker = procs.marker_bytes(m.marker) if m.marker else None
        if boot_marker:
            procs.kill_everything(m.groups, boot_marker, prefix_only=True)
        if m.agent is not None:
            m.agent.join(AGENT_JOIN_SECONDS)
            # The agent may have been between two scripts: kill once more after it stopped.
            if boot_marker:
                procs.kill_everything(m.groups, boot_marker, prefix_only=True)
        if m.sshd is not None:
            m.sshd.stop()
            m.sshd = None
        if m.metadata is not None:
            m.metadata_app.close()
            m.metadata.stop()
            m.metadata = None
        m.agent = None
        # Forget this boot's groups: their ids may be reused by unrelated processes later.
        m.groups = []
        m.marker = ""
        self._console(key, "Power off.")

    def _terminated(self, key: InstanceKey) -> None:
        with self.store.lock:
            rec = self._record(key)
            if rec is None:
                return
            rec.resource["status"] = Status.TERMINATED
            rec.resource["lastStopTimestamp"] = self.store.timestamp()
            # A stopped VM has no planned termination; the next boot sets it again.
            rec.resource.pop("resourceStatus", None)
            rec.guest.update(metadataPort=None, sshPort=None, maintenanceEvent="NONE")
            self.store.commit()

    def _remove(self, key: InstanceKey) -> None:
        with self.store.lock:
            rec = self.store.instances.pop(key, None)
            if rec is None:
                return
            self.store.commit()
            inst_dir = self.instance_dir(rec)
        with self._machines_lock:
            self.machines.pop(key, None)
        shutil.rmtree(inst_dir, ignore_errors=True)

    # --- verbs used by the API -------------------------------------------------------------
    def start(self, key: InstanceKey) -> None:
        self.boot(key)

    def stop(self, key: InstanceKey) -> None:
        self._stop_boot(key, None, "Stopping instance", Then.TERMINATE)

    def delete(self, key: InstanceKey) -> None:
        self._stop_boot(key, None, "Deleting instance", Then.DELETE)

    def preempt(self, key: InstanceKey) -> None:
        """Spot preemption: preempted=TRUE now, then (in a thread) the preemption notice if the VM
        has one, soft-off, window, off. A VM already being preempted is left to that."""
        with self.store.lock:
            rec = self._running(key, "only RUNNING VMs are preempted")
            if not is_spot(rec.resource):
                raise invalid(f"Instance '{key.name}' is not a Spot or preemptible VM.")
            if rec.guest.get("preempted"):
                return
            rec.guest["preempted"] = True
            boot = rec.guest["boot"]
            notice_seconds = preemption_notice_seconds(rec.resource)
            self.store.commit()
        self._console(key, "Instance was preempted.")
        if notice_seconds:
            self._console(key, f"Preemption notice: {notice_seconds:g} s before the soft-off")
        self._in_thread("preempt", key, self._end_preemption, boot, notice_seconds)

    def _end_preemption(self, key: InstanceKey, boot: int, notice_seconds: float) -> None:
        """After the preemption notice (none by default): the stop path, then the action."""
        if notice_seconds and self._closing.wait(notice_seconds):
            return
        self._stop_boot(key, boot, "Preemption", after_preemption)

    def _end_run_limit(self, key: InstanceKey, boot: int, limit_seconds: float) -> None:
        """At the end of a boot's time limit: the stop path, then instanceTerminationAction.
        Checks every RUN_LIMIT_CHECK_SECONDS that the boot is still up, so the timer of a boot
        that ended early (a stop, a preemption) does not linger for the rest of its limit."""
        deadline = time.monotonic() + limit_seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._closing.wait(min(left, RUN_LIMIT_CHECK_SECONDS)):
                return
            with self.store.lock:
                if not _is_boot(self._record(key), boot):
                    return
        with self.store.lock:
            if not _is_boot(self._record(key), boot):
                return
        self._console(key, "Instance reached the end of its time limit.")
        self._stop_boot(key, boot, "Time limit reached", after_preemption)

    def simulate_maintenance(self, key: InstanceKey) -> None:
        """Spot VMs are preempted; others get the notice, then live-migrate or stop."""
        with self.store.lock:
            rec = self._running(key, "maintenance needs a RUNNING VM")
            spot = is_spot(rec.resource)
            on_maintenance = rec.resource["scheduling"].get("onHostMaintenance", "MIGRATE")
            boot = rec.guest["boot"]
        if spot:
            self.preempt(key)
            return
        event = TERMINATE_EVENT if on_maintenance == "TERMINATE" else MIGRATE_EVENT
        self._set(key, guest_maintenanceEvent=event)
        self._console(key, f"Host maintenance scheduled: {event}")
        self._in_thread("maintenance", key, self._end_maintenance, boot, event)

    def _end_maintenance(self, key: InstanceKey, boot: int, event: str) -> None:
        """After the notice: a live migration only clears it; TERMINATE stops the boot."""
        if self._closing.wait(self.store.knobs.maintenance_notice_seconds):
            return
        if event == TERMINATE_EVENT:
            self._stop_boot(key, boot, "Host maintenance", after_maintenance)
            return
        with self.machine(key).lock, self.store.lock:
            rec = self._record(key)
            if _is_boot(rec, boot):
                rec.guest["maintenanceEvent"] = "NONE"  # live-migrated; nothing stops
                self.store.commit()

    def guest_shutdown(self, key: InstanceKey, action: str) -> None:
        """`shutdown`/`poweroff`/`reboot` inside the guest (through the shims). A power-off is
        a system event in the zone's operations, as on GCE; a reboot is not logged there."""
        with self.store.lock:
            rec = self._record(key)
            if rec is None or rec.status != Status.RUNNING:
                return
            boot = rec.guest["boot"]
            instance_id = rec.resource["id"]
        then = Then.RESTART if action == "reboot" else Then.TERMINATE
        if then is Then.TERMINATE:
            record_system_event(
                self.store, GUEST_TERMINATE, key.project, key.zone,
                f"projects/{key.project}/zones/{key.zone}/instances/{key.name}", instance_id,
            )  # fmt: skip
        self._in_thread(f"guest-{action}", key, self._stop_boot, boot, f"Guest {action}", then)

    # --- daemon start/stop -----------------------------------------------------------------------
    def resume(self) -> None:
        """After a (re)start: kill leftovers of a crashed daemon, reboot instances that were up."""
        procs.kill_everything([], procs.marker_bytes(f"{self.tag}:"), prefix_only=True)
        with self.store.lock:
            keys = list(self.store.instances)
            to_boot = []
            for key in keys:
                rec = self.store.instances[key]
                if rec.status in (Status.PROVISIONING, Status.STAGING, Status.RUNNING):
                    rec.resource["status"] = Status.TERMINATED  # boot() starts from a stopped VM
                    to_boot.append(key)
                elif rec.status == Status.STOPPING:
                    rec.resource["status"] = Status.TERMINATED
                    rec.resource["lastStopTimestamp"] = self.store.timestamp()
                rec.guest.update(metadataPort=None, sshPort=None, maintenanceEvent="NONE")
            self.store.commit()
        for key in to_boot:
            self._console(key, "Host restarted (localgce daemon restart).")
            self.boot(key)
        self._ticker = threading.Thread(target=self._chaos_loop, name="chaos", daemon=True)
        self._ticker.start()

    def _chaos_loop(self) -> None:
        while not self._closing.wait(self.chaos_tick_seconds):
            rate = self.store.knobs.preemption_rate_per_hour
            if rate <= 0:
                continue
            probability = 1.0 - math.exp(-rate * self.chaos_tick_seconds / 3600.0)
            with self.store.lock:
                victims = [
                    key
                    for key, rec in self.store.instances.items()
                    if rec.status == Status.RUNNING
                    and is_spot(rec.resource)
                    and not rec.guest.get("preempted")
                    and self.store.rng.random() < probability
                ]
            for key in victims:
                try:
                    self.preempt(key)
                except Exception as exc:  # it may have stopped meanwhile
                    log.info("random preemption of %s skipped: %s", key.name, exc)

    def close(self) -> None:
        """Daemon stop: quick kill of every guest process; statuses stay for the next resume()."""
        self._closing.set()
        with self._machines_lock:
            machines = list(self.machines.values())
        for m in machines:
            if m.agent is not None:
                m.agent.stop_running_more()
        for m in machines:
            if m.marker:
                procs.signal_groups(m.groups, signal.SIGTERM)
                procs.signal_all(
                    procs.find(m.groups, procs.marker_bytes(m.marker), True), signal.SIGTERM
                )
        daemon_marker = procs.marker_bytes(f"{self.tag}:")
        all_groups = [g for m in machines for g in m.groups]
        procs.wait_gone(all_groups, daemon_marker, self.quick_kill_seconds, prefix_only=True)
        for m in machines:
            if m.agent is not None or m.metadata is not None:
                self._power_off(m.key, m)
        procs.kill_everything(all_groups, daemon_marker, prefix_only=True)


def _is_boot(rec: InstanceRecord | None, boot: int) -> bool:
    """Is `boot` the instance's current boot, and not yet stopped?"""
    return (
        rec is not None
        and rec.guest.get("boot") == boot
        and rec.status in (Status.RUNNING, Status.STOPPING)
    )
