"""`python -m localgce serve|start|stop|status --state-dir DIR [knobs]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

from localgce import daemon
from localgce.config import LIST_KNOBS, Knobs, knob_flag

DEFAULT_STATE_DIR = ".localgce"


def _json_arg(text: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None


def _knob_args(parser: argparse.ArgumentParser) -> None:
    defaults = Knobs()
    group = parser.add_argument_group("knobs (saved in the state dir; GCE's values by default)")
    group.add_argument(
        "--exhausted-zones",
        default=None,
        help="comma-separated zones whose inserts fail with ZONE_RESOURCE_POOL_EXHAUSTED",
    )
    group.add_argument(
        "--storage-denied-buckets",
        default=None,
        help="comma-separated buckets whose objects cannot be written (GCS's 403)",
    )
    for name, text in [
        (
            "faults",
            'the next N matching calls fail: JSON list of {"method": "compute.instances.start", '
            '"error": "rateLimitExceeded", "times": N, "zone": "optional"}',
        ),
        ("quotas", 'GPU quota limits: JSON, e.g. {"us-central1": {"NVIDIA_T4_GPUS": 4}}'),
        ("zone_accelerators", 'accelerator types per zone: JSON, e.g. {"us-central1-a": []}'),
        (
            "networks",
            'networks besides the auto-mode default: JSON, e.g. {"my-net": {"subnetworks": '
            '{"us-central1": {"my-subnet": {"privateIpGoogleAccess": true}}}}}',
        ),
    ]:
        group.add_argument(knob_flag(name), type=_json_arg, default=None, help=text)
    for name, text in [
        ("preemption_rate_per_hour", "random preemptions per Spot VM per hour"),
        ("grace_spot_seconds", "shutdown window of Spot/preemptible VMs"),
        ("grace_standard_seconds", "shutdown window of standard VMs"),
        ("maintenance_notice_seconds", "maintenance-event notice before a host-maintenance stop"),
        ("operation_delay_seconds", "keep operations RUNNING this long (0: DONE at once)"),
    ]:
        group.add_argument(
            knob_flag(name),
            type=float,
            default=None,
            help=f"{text} (default {getattr(defaults, name):g})",
        )


def _knobs(args: argparse.Namespace) -> dict:
    """The knobs given as flags, by their `Knobs` field names (argparse's dest names)."""
    knobs = {}
    for spec in fields(Knobs):
        value = getattr(args, spec.name)
        if value is None:
            continue
        if spec.name in LIST_KNOBS:
            value = [z for z in value.split(",") if z]
        knobs[spec.name] = value
    return knobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localgce", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("serve", "run the emulator in the foreground"),
        ("start", "start the emulator in the background; print its endpoints once listening"),
        ("stop", "stop the emulator and every instance process"),
        ("status", "print the endpoints if the emulator is running (exit 1 if not)"),
    ]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--state-dir",
            type=Path,
            default=Path(DEFAULT_STATE_DIR),
            help=f"where state, disks and endpoints.json live (default {DEFAULT_STATE_DIR})",
        )
        if name in ("serve", "start"):
            cmd.add_argument("--no-ssh", action="store_true", help="do not run a per-instance sshd")
            _knob_args(cmd)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "serve":
            return daemon.serve(args.state_dir, _knobs(args), ssh_enabled=not args.no_ssh)
        if args.command == "start":
            print(
                json.dumps(daemon.start(args.state_dir, _knobs(args), ssh_enabled=not args.no_ssh))
            )
            return 0
        if args.command == "stop":
            stopped = daemon.stop(args.state_dir)
            print("stopped" if stopped else "not running")
            return 0
        endpoints = daemon.status(args.state_dir)
        print(json.dumps(endpoints) if endpoints else "not running")
        return 0 if endpoints else 1
    except daemon.DaemonError as exc:
        print(f"localgce: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
