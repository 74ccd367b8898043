"""Acceptance 5 and 7: no process outlives its instance; every socket is on 127.0.0.1."""

# ruff: noqa: S310 - every URL here is the emulator on 127.0.0.1

from __future__ import annotations

import os
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1
from lgtest import PROJECT, ZONE, instance_resource, wait_for

from localgce import daemon
from localgce.client import compute_client_options, ensure_running, extension_headers
from trainer.lease import pid_alive

INSTANCES = 30
# A token only this test's guests carry on their command lines, to find leftovers in /proc.
TOKEN = "4242.5"
STARTUP = f"""#!/bin/bash
echo "METADATA_HOST=$GCE_METADATA_HOST"
setsid sleep {TOKEN}1 &          # leaves the process group: found by its LOCALGCE_GUEST marker
nohup sleep {TOKEN}2 >/dev/null 2>&1 &
trap '' TERM                     # ignores SIGTERM: must be SIGKILLed after the window
sleep {TOKEN}3 & wait $!
"""


def leftover_guests(token: str) -> list[str]:
    """Live (not zombie) processes whose command line carries `token`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmdline and state != b"Z" and "pytest" not in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def descendants(root_pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    seen, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def inet_sockets() -> dict[str, tuple[str, str]]:
    """inode → (table, local address hex) for every TCP/UDP socket, IPv4 and IPv6."""
    table = {}
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{name}") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            table[fields[9]] = (name, fields[1].split(":")[0])
    return table


LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.mark.slow
def test_30_concurrent_lifecycles_leave_no_process_and_only_loopback_sockets(tmp_path):
    state_dir = tmp_path / "leaks"
    endpoints = ensure_running(state_dir, grace_spot_seconds=1.0, grace_standard_seconds=1.0)
    try:
        opts = compute_client_options(endpoints)
        instances = compute_v1.InstancesClient(**opts)
        images = compute_v1.ImagesClient(**opts)
        image_dir = tmp_path / "image"
        image_dir.mkdir()
        os.symlink(sys.prefix, image_dir / "venv")
        images.insert(
            project=PROJECT,
            image_resource=compute_v1.Image(
                name="leak-img", raw_disk=compute_v1.RawDisk(source=str(image_dir))
            ),
        ).result()
        image = f"projects/{PROJECT}/global/images/leak-img"
        names = [f"leak-{i:02d}" for i in range(INSTANCES)]

        def status(name):
            return instances.get(project=PROJECT, zone=ZONE, instance=name).status

        def serial(name):
            return instances.get_serial_port_output(
                project=PROJECT, zone=ZONE, instance=name
            ).contents

        def boot(name):
            instances.insert(
                project=PROJECT,
                zone=ZONE,
                instance_resource=instance_resource(name, image, startup=STARTUP),
            ).result()
            wait_for(lambda: "METADATA_HOST=" in serial(name), what=f"{name} startup script")

        with ThreadPoolExecutor(max_workers=INSTANCES) as pool:
            list(pool.map(boot, names))

        # The script prints its line before its background children have all exec'd `sleep`:
        # wait (bounded) until the detector sees all three per guest, so it is proven to work.
        wait_for(
            lambda: len(leftover_guests(TOKEN)) >= 3 * INSTANCES,
            what="the detector to see every guest's three processes while they run",
        )

        # Acceptance 7, while all 30 run with their metadata servers, sshd and scripts.
        pids = descendants(endpoints["pid"])
        mine = socket_inodes(pids)
        table = inet_sockets()
        assert mine, "the daemon should own sockets"
        off_loopback = {i: table[i] for i in mine if i in table and table[i][1] not in LOOPBACK_HEX}
        assert off_loopback == {}

        def cycle(name):
            url = (
                f"{endpoints['compute']}/compute/v1/projects/{PROJECT}/zones/{ZONE}"
                f"/instances/{name}/preempt"
            )
            request = urllib.request.Request(
                url, method="POST", headers=extension_headers(endpoints)
            )
            urllib.request.urlopen(request, timeout=60).read()
            wait_for(lambda: status(name) == "TERMINATED", what=f"{name} preempted")
            instances.start(project=PROJECT, zone=ZONE, instance=name).result()
            assert status(name) == "RUNNING"
            instances.delete(project=PROJECT, zone=ZONE, instance=name).result()
            with pytest.raises(exceptions.NotFound):
                status(name)

        with ThreadPoolExecutor(max_workers=INSTANCES) as pool:
            list(pool.map(cycle, names))
        assert leftover_guests(TOKEN) == []
        daemon_pid = endpoints["pid"]
    finally:
        assert daemon.stop(state_dir)
    assert not pid_alive(daemon_pid)  # gone, or a zombie its parent (this test) did not reap
    assert leftover_guests(TOKEN) == []
    assert leftover_guests(str(state_dir)) == []  # fake-gcs-server and sshd went with it
