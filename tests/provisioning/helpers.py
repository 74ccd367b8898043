"""Helpers for the provisioning tests: run a script with a controlled environment and PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "provisioning"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCRIPT_TIMEOUT_SECONDS = 120


def versions() -> dict[str, str]:
    """provisioning/versions.env as a dict (the test reads the pins; it does not repeat them)."""
    pins = {}
    for line in (PROVISIONING / "versions.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key] = value
    return pins


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, path_prefix: Path | None = None
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SURVIVAL_")}
    full_env.update(env or {})
    if path_prefix is not None:
        full_env["PATH"] = f"{path_prefix}:{full_env['PATH']}"
    return subprocess.run(
        ["bash", str(PROVISIONING / name), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )


def stub_commands(bin_dir: Path, log: Path, names: list[str], script: str = "") -> None:
    """Executables that append `name args` to `log` (then run `script`) instead of the real tool."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        stub = bin_dir / name
        stub.write_text(f'#!/bin/bash\necho "{name} $*" >> "{log}"\n{script}\n')
        stub.chmod(0o755)
