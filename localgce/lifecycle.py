"""Instance lifecycle: boot, the shutdown path, preemption, host maintenance, guest shutdown.

Threads and locks:
- Each instance has a `Machine` whose `lock` serialises its transitions (boot, shutdown, delete).
  Take a Machine lock before `Store.lock`, never the other way round.
- A boot starts the instance's metadata server (a thread in the daemon), its sshd (a process
  group) and a `GuestAgent` thread that runs the startup scripts (a process group each).
- The shutdown path (stop, delete, preemption, maintenance, guest `shutdown`): status STOPPING,
  shutdown scripts start, SIGTERM to everything else of the boot, wait until all of it has exited
  or the grace window (30 s Spot/preemptible, 120 s standard; knobs) has passed, SIGKILL the rest,
  then TERMINATED (or deleted). Processes are found by group and by the LOCALGCE_GUEST marker
  (procs.py), so nothing outlives its instance.
- Preemption and maintenance run in their own threads; `preempted=TRUE` and the maintenance
  notice are set before they start, so the guest sees them before any signal.
- A ticker thread preempts RUNNING Spot VMs at random when `preemption_rate_per_hour` > 0.
- `close()` (daemon stop) kills every guest process quickly and leaves statuses as they are;
  `resume()` (daemon start) sweeps leftovers of a crashed daemon and boots RUNNING instances again,
  as a host reboot would.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from localgce import procs
from localgce.errors import invalid, not_ready
from localgce.guest import GuestAgent, guest_env, write_shims
from localgce.httpserver import RunningServer, start_server
from localgce.metadata_server import MetadataServer, build_tree
from localgce.serial import SerialPort
from localgce.ssh import Sshd, parse_ssh_keys, sshd_binary, write_authorized_keys
from localgce.state import InstanceRecord, Store

log = logging.getLogger("localgce.lifecycle")
QUICK_KILL_SECONDS = 2.0
CHAOS_TICK_SECONDS = 1.0
AGENT_JOIN_SECONDS = 2.0
KERNEL_IDENT = "localgce"


@dataclass
class Machine:
    key: tuple[str, str, str]
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


def is_spot(resource: dict) -> bool:
    sched = resource.get("scheduling", {})
    return sched.get("provisioningModel") == "SPOT" or bool(sched.get("preemptible"))


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
        self.machines: dict[tuple[str, str, str], Machine] = {}
        self._machines_lock = threading.Lock()
        self._closing = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- helpers ---------------------------------------------------------------------------
    def machine(self, key) -> Machine:
        with self._machines_lock:
            m = self.machines.get(key)
            if m is None:
                m = self.machines[key] = Machine(key=key)
            return m

    def instance_dir(self, rec: InstanceRecord) -> Path:
        return self.state_dir / "instances" / rec.resource["id"]

    def _record(self, key) -> InstanceRecord | None:
        return self.store.instances.get(key)

    def serial(self, key) -> SerialPort:
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

    def _console(self, key, text: str) -> None:
        self.serial(key).line(key[2], KERNEL_IDENT, 1, text)

    def _set(self, key, **changes) -> InstanceRecord | None:
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

    # --- boot --------------------------------------------------------------------------------
    def boot(self, key) -> None:
        """TERMINATED/new → PROVISIONING → STAGING → RUNNING, guest agent started."""
        m = self.machine(key)
        with m.lock:
            with self.store.lock:
                rec = self._record(key)
                if rec is None or rec.status == "RUNNING":
                    return
                boot_number = rec.guest.get("boot", 0) + 1
                rec.resource["status"] = "PROVISIONING"
                rec.guest.update(boot=boot_number, preempted=False, maintenanceEvent="NONE")
                self.store.commit()
                inst_dir = self.instance_dir(rec)
                disk = Path(rec.guest["disk"])
                image_dir = rec.guest.get("imageDir")
                project = rec.guest["project"]
            disk.mkdir(parents=True, exist_ok=True)
            m.marker = f"{self.tag}:{rec.resource['id']}:{boot_number}:"
            m.groups = []
            self._set(key, status="STAGING")
            m.metadata_app = MetadataServer(
                self.store,
                tree=lambda: build_tree(self.store, key),
                guest_shutdown=lambda action: self.guest_shutdown(key, action),
            )
            m.metadata = start_server(m.metadata_app, name=f"metadata-{key[2]}")
            hostport = f"127.0.0.1:{m.metadata.port}"
            bin_dir = inst_dir / "guest-bin"
            write_shims(bin_dir, m.metadata.url)
            env = guest_env(
                disk=disk,
                bin_dir=bin_dir,
                image_dir=image_dir,
                metadata_hostport=hostport,
                storage_url=self.storage_url,
                project=project,
                marker=m.marker + "main",
            )
            self._console(key, f"Booting {key[2]} (boot {boot_number}); metadata server {hostport}")
            ssh_port = None
            if self.ssh_enabled:
                ssh_port = self._start_sshd(key, m, inst_dir, env)
            with self.store.lock:
                rec = self._record(key)
                rec.resource["status"] = "RUNNING"
                rec.resource["lastStartTimestamp"] = self.store.timestamp()
                rec.guest.update(metadataPort=m.metadata.port, sshPort=ssh_port)
                self.store.commit()
            shutdown_env = dict(env, **{procs.MARKER_VAR: m.marker + "shutdown"})
            m.agent = GuestAgent(
                host=key[2],
                disk=disk,
                env=env,
                shutdown_env=shutdown_env,
                serial=self.serial(key),
                storage_url=self.storage_url,
                attributes=lambda: self._attributes(key),
                on_group=m.groups.append,
            )
            m.agent.start()

    def _attributes(self, key) -> tuple[dict[str, str], dict[str, str]]:
        with self.store.lock:
            rec = self._record(key)
            if rec is None:
                return {}, {}
            project = self.store.project(key[0])
            return _items(rec.resource.get("metadata", {})), _items(
                project["commonInstanceMetadata"]
            )

    def _start_sshd(self, key, m: Machine, inst_dir: Path, env: dict) -> int | None:
        session_env = {
            k: v for k, v in env.items() if k not in ("PATH", "HOME", "USER", "LOGNAME", "SHELL")
        }
        try:
            self.refresh_ssh_keys(key)
            m.sshd = Sshd.start(inst_dir / "ssh", env, session_env)
        except Exception as exc:
            log.warning("no ssh for %s: %s", key[2], exc)
            self._console(key, f"sshd failed to start: {exc}")
            return None
        m.groups.append(m.sshd.process.pid)
        return m.sshd.port

    def refresh_ssh_keys(self, key) -> None:
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

    # --- the shutdown path ---------------------------------------------------------------------
    def _shutdown(self, key, reason: str, grace_seconds: float | None = None) -> None:
        """ACPI soft-off, grace window, mechanical off. Machine lock held by the caller."""
        m = self.machine(key)
        with self.store.lock:
            rec = self._record(key)
            if rec is None or rec.status == "TERMINATED":
                return
            if grace_seconds is None:
                grace_seconds = self.grace_seconds(rec.resource)
            rec.resource["status"] = "STOPPING"
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

    def _power_off(self, key, m: Machine) -> None:
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

    def _terminated(self, key) -> None:
        with self.store.lock:
            rec = self._record(key)
            if rec is None:
                return
            rec.resource["status"] = "TERMINATED"
            rec.resource["lastStopTimestamp"] = self.store.timestamp()
            rec.guest.update(metadataPort=None, sshPort=None, maintenanceEvent="NONE")
            self.store.commit()

    def _remove(self, key) -> None:
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
    def stop(self, key) -> None:
        m = self.machine(key)
        with m.lock:
            self._shutdown(key, "Stopping instance")
            self._terminated(key)

    def start(self, key) -> None:
        self.boot(key)

    def delete(self, key) -> None:
        m = self.machine(key)
        with m.lock:
            self._shutdown(key, "Deleting instance")
            self._remove(key)

    def preempt(self, key) -> None:
        """Spot preemption: preempted=TRUE now, then (in a thread) soft-off, window, off."""
        with self.store.lock:
            rec = self._record(key)
            if rec.status != "RUNNING":
                raise not_ready(
                    f"Instance '{key[2]}' is {rec.status}; only RUNNING VMs are preempted."
                )
            if not is_spot(rec.resource):
                raise invalid(f"Instance '{key[2]}' is not a Spot or preemptible VM.")
            rec.guest["preempted"] = True
            boot_number = rec.guest["boot"]
            self.store.commit()
        self._console(key, "Instance was preempted.")
        threading.Thread(
            target=self._finish_preemption,
            args=(key, boot_number),
            name=f"preempt-{key[2]}",
            daemon=True,
        ).start()

    def _finish_preemption(self, key, boot_number: int) -> None:
        m = self.machine(key)
        with m.lock:
            with self.store.lock:
                rec = self._record(key)
                if (
                    rec is None
                    or rec.guest.get("boot") != boot_number
                    or rec.status not in ("RUNNING", "STOPPING")
                ):
                    return
                action = rec.resource["scheduling"].get("instanceTerminationAction", "STOP")
            self._shutdown(key, "Preemption", self.store.knobs.grace_spot_seconds)
            if action == "DELETE":
                self._remove(key)
            else:
                self._terminated(key)

    def simulate_maintenance(self, key) -> None:
        with self.store.lock:
            rec = self._record(key)
            if rec.status != "RUNNING":
                raise not_ready(
                    f"Instance '{key[2]}' is {rec.status}; maintenance needs a RUNNING VM."
                )
            spot = is_spot(rec.resource)
            on_maintenance = rec.resource["scheduling"].get("onHostMaintenance", "MIGRATE")
        if spot:
            self.preempt(key)
            return
        event = (
            "TERMINATE_ON_HOST_MAINTENANCE"
            if on_maintenance == "TERMINATE"
            else "MIGRATE_ON_HOST_MAINTENANCE"
        )
        rec = self._set(key, guest_maintenanceEvent=event)
        self._console(key, f"Host maintenance scheduled: {event}")
        threading.Thread(
            target=self._finish_maintenance,
            args=(key, rec.guest["boot"], event),
            name=f"maintenance-{key[2]}",
            daemon=True,
        ).start()

    def _finish_maintenance(self, key, boot_number: int, event: str) -> None:
        self._closing.wait(self.store.knobs.maintenance_notice_seconds)
        if self._closing.is_set():
            return
        m = self.machine(key)
        with m.lock:
            with self.store.lock:
                rec = self._record(key)
                if rec is None or rec.guest.get("boot") != boot_number or rec.status != "RUNNING":
                    return
                restart = bool(rec.resource["scheduling"].get("automaticRestart"))
            if event == "MIGRATE_ON_HOST_MAINTENANCE":
                self._set(key, guest_maintenanceEvent="NONE")  # live-migrated; nothing stops
                return
            self._shutdown(key, "Host maintenance", self.store.knobs.grace_standard_seconds)
            self._terminated(key)
            if restart:
                self.boot(key)

    def guest_shutdown(self, key, action: str) -> None:
        """`shutdown`/`poweroff`/`reboot` inside the guest (through the shims)."""
        with self.store.lock:
            rec = self._record(key)
            if rec is None or rec.status != "RUNNING":
                return
            boot_number = rec.guest["boot"]
        threading.Thread(
            target=self._finish_guest_shutdown,
            args=(key, boot_number, action),
            name=f"guest-{action}-{key[2]}",
            daemon=True,
        ).start()

    def _finish_guest_shutdown(self, key, boot_number: int, action: str) -> None:
        m = self.machine(key)
        with m.lock:
            with self.store.lock:
                rec = self._record(key)
                if rec is None or rec.guest.get("boot") != boot_number or rec.status != "RUNNING":
                    return
            self._shutdown(key, f"Guest {action}")
            self._terminated(key)
            if action == "reboot":
                self.boot(key)

    # --- daemon start/stop -----------------------------------------------------------------------
    def resume(self) -> None:
        """After a (re)start: kill leftovers of a crashed daemon, reboot instances that were up."""
        procs.kill_everything([], procs.marker_bytes(f"{self.tag}:"), prefix_only=True)
        with self.store.lock:
            keys = list(self.store.instances)
            to_boot = []
            for key in keys:
                rec = self.store.instances[key]
                if rec.status in ("PROVISIONING", "STAGING", "RUNNING"):
                    rec.resource["status"] = "TERMINATED"  # boot() starts from a stopped VM
                    to_boot.append(key)
                elif rec.status == "STOPPING":
                    rec.resource["status"] = "TERMINATED"
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
                    if rec.status == "RUNNING"
                    and is_spot(rec.resource)
                    and self.store.rng.random() < probability
                ]
            for key in victims:
                try:
                    self.preempt(key)
                except Exception as exc:  # it may have stopped meanwhile
                    log.info("random preemption of %s skipped: %s", key[2], exc)

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


def _items(metadata: dict) -> dict[str, str]:
    return {item["key"]: item.get("value", "") for item in metadata.get("items", [])}
