"""Per-instance sshd: keys from project/instance `ssh-keys`, port published in natIP."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from pathlib import Path

import pytest
from google.cloud import compute_v1
from lgtest import PROJECT, ZONE, unique, wait_for

from localgce.ssh import parse_ssh_keys


@pytest.fixture(autouse=True)
def _sshd_installed():
    """These tests need openssh-server; `make test` installs it, so its absence is a failure."""
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed: run `make system-deps`")


def keypair(tmp_path, name: str):
    key = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key, key.with_suffix(".pub").read_text().strip()


def ssh(port: int, key, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ssh", "-p", str(port), "-i", str(key), "-F", "/dev/null",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=20",
            f"{getpass.getuser()}@127.0.0.1", command,
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_metadata_keys_cannot_inject_options():
    keys = parse_ssh_keys(
        {
            "ssh-keys": 'alice:command="rm -rf /" ssh-ed25519 AAAA x\n'
            "bob:ssh-ed25519 AAAAC3 bob@host"
        },
        {"ssh-keys": "carol:ssh-rsa AAAAB3 c"},
    )
    assert keys == {"bob": ["ssh-ed25519 AAAAC3 bob@host"], "carol": ["ssh-rsa AAAAB3 c"]}
    blocked = parse_ssh_keys(
        {"block-project-ssh-keys": "TRUE"}, {"ssh-keys": "carol:ssh-rsa AAAAB3 c"}
    )
    assert blocked == {}


@pytest.mark.slow
def test_ssh_with_instance_and_project_keys(compute, image, tmp_path):
    user = getpass.getuser()
    instance_key, instance_pub = keypair(tmp_path, "instance_key")
    project_key, project_pub = keypair(tmp_path, "project_key")
    project = compute.projects.get(project=PROJECT)
    others = [i for i in project.common_instance_metadata.items if i.key != "ssh-keys"]
    compute.projects.set_common_instance_metadata(
        project=PROJECT,
        metadata_resource=compute_v1.Metadata(
            fingerprint=project.common_instance_metadata.fingerprint,
            items=[*others, compute_v1.Items(key="ssh-keys", value=f"{user}:{project_pub}")],
        ),
    ).result()
    name = unique("ssh")
    compute.insert(name, image, spot=False, extra_metadata={"ssh-keys": f"{user}:{instance_pub}"})
    nat_ip = compute.get(name).network_interfaces[0].access_configs[0].nat_i_p
    host, _, port = nat_ip.partition(":")
    assert host == "127.0.0.1" and port.isdigit()

    for key in (instance_key, project_key):
        result = ssh(int(port), key, 'echo "root=$LOCALGCE_ROOT"')
        assert result.returncode == 0, result.stderr
        assert "/disk" in result.stdout

    compute.instances.stop(project=PROJECT, zone=ZONE, instance=name).result()
    assert compute.get(name).network_interfaces[0].access_configs[0].nat_i_p == "127.0.0.1"
    wait_for(lambda: ssh(int(port), instance_key, "true").returncode != 0, what="sshd to stop")
    compute.delete(name)
