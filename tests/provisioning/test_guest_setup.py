"""guest-setup.sh on a directory tree: log dir, what reaches the serial console, idempotent."""

from __future__ import annotations

import os
import re
import shlex

from tests.provisioning.helpers import run_script

# What already writes to the serial console by itself: the script runner (legacy and current
# names, and the units that run it), the guest agent, and the kernel.
ON_THE_CONSOLE_ALREADY = [
    "google_metadata_script_runner",
    "gce_metadata_script_runner",
    "google-startup-scripts",
    "google-shutdown-scripts",
    "google_guest_agent",
    "google-guest-agent",
    "kernel",
]


def unit_value(text: str, key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", text, re.M)
    assert match, f"{key}= missing from the unit"
    return match.group(1)


def test_guest_setup_copies_only_lines_the_runner_does_not_write_to_the_console(tmp_path):
    first = run_script("guest-setup.sh", "--root", str(tmp_path))
    assert first.returncode == 0, first.stderr
    conf = tmp_path / "etc/systemd/journald.conf.d/90-survival.conf"
    # The whole journal is not forwarded: that showed every script-runner line twice.
    text = conf.read_text()
    assert re.search(r"^ForwardToConsole=no$", text, re.M)
    assert "ForwardToConsole=yes" not in text

    unit_path = tmp_path / "etc/systemd/system/survival-console.service"
    unit = unit_path.read_text()
    argv = shlex.split(unit_value(unit, "ExecStart"))
    assert argv[:2] == ["/usr/bin/journalctl", "--follow"]
    assert "--lines=0" in argv  # a restart never replays old lines
    matches = [arg for arg in argv if not arg.startswith("-")][1:]
    # Only journal matches on the syslog identifier (ORed by journalctl), and none of them is
    # something that writes to the console itself.
    assert matches and all(m.startswith("SYSLOG_IDENTIFIER=") for m in matches), matches
    identifiers = {m.partition("=")[2] for m in matches}
    assert identifiers == {"survival", "systemd-coredump"}
    assert not any(known in m for m in matches for known in ON_THE_CONSOLE_ALREADY)
    assert unit_value(unit, "StandardOutput") == "tty"
    assert unit_value(unit, "TTYPath") == "/dev/ttyS0"
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants/survival-console.service"
    assert os.readlink(wants) == "/etc/systemd/system/survival-console.service"
    assert (tmp_path / "var/log/survival").is_dir()

    second = run_script("guest-setup.sh", "--root", str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert conf.read_text() == text  # rewritten whole, never appended
    assert unit_path.read_text() == unit


def test_guest_setup_rejects_a_bad_user_name(tmp_path):
    result = run_script("guest-setup.sh", "--root", str(tmp_path), "--user", "x;rm")
    assert result.returncode == 2
    assert "not a valid user name" in result.stderr
