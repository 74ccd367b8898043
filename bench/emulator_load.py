"""Latency of the official google-cloud-compute client against localgce with N instances.

    .venv/bin/python bench/emulator_load.py [--instances 50] [--rounds 200] [--ssh]

Starts a throwaway daemon, registers a local image, inserts N instances concurrently (insert
latency), then times `get` and `list` rounds, and prints p50/p99 per call. Everything is on
127.0.0.1; the daemon and its instances are stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from google.cloud import compute_v1

from localgce import daemon
from localgce.client import compute_client_options, ensure_running

PROJECT = "bench"
ZONE = "us-central1-a"


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def report(name: str, samples_seconds: list[float]) -> None:
    ms = [s * 1000 for s in samples_seconds]
    print(
        f"{name:7} n={len(ms):4d}  p50={percentile(ms, 50):7.1f} ms"
        f"  p99={percentile(ms, 99):7.1f} ms  mean={statistics.fmean(ms):7.1f} ms"
    )


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--instances", type=int, default=50, help="instances to create (default 50)"
    )
    parser.add_argument("--rounds", type=int, default=200, help="get and list calls (default 200)")
    parser.add_argument("--workers", type=int, default=10, help="concurrent inserts (default 10)")
    parser.add_argument("--ssh", action="store_true", help="give each instance its sshd too")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="localgce-bench-") as tmp:
        state_dir = Path(tmp) / "state"
        image_dir = Path(tmp) / "image"
        image_dir.mkdir()
        os.symlink(sys.prefix, image_dir / "venv")
        endpoints = ensure_running(state_dir, ssh_enabled=args.ssh, grace_spot_seconds=1.0)
        try:
            opts = compute_client_options(endpoints)
            instances = compute_v1.InstancesClient(**opts)
            compute_v1.ImagesClient(**opts).insert(
                project=PROJECT,
                image_resource=compute_v1.Image(
                    name="bench", raw_disk=compute_v1.RawDisk(source=str(image_dir))
                ),
            ).result()

            def insert(i: int) -> float:
                resource = compute_v1.Instance(
                    name=f"bench-{i:03d}",
                    machine_type=f"zones/{ZONE}/machineTypes/n1-standard-4",
                    disks=[
                        compute_v1.AttachedDisk(
                            boot=True,
                            initialize_params=compute_v1.AttachedDiskInitializeParams(
                                source_image=f"projects/{PROJECT}/global/images/bench"
                            ),
                        )
                    ],
                    scheduling=compute_v1.Scheduling(provisioning_model="SPOT"),
                    metadata=compute_v1.Metadata(
                        items=[compute_v1.Items(key="startup-script", value="sleep 600")]
                    ),
                )
                return timed(
                    lambda: instances.insert(
                        project=PROJECT, zone=ZONE, instance_resource=resource
                    ).result()
                )

            with ThreadPoolExecutor(max_workers=args.workers) as pool:
                insert_times = list(pool.map(insert, range(args.instances)))
            get_times = [
                timed(
                    lambda i=i: instances.get(
                        project=PROJECT, zone=ZONE, instance=f"bench-{i % args.instances:03d}"
                    )
                )
                for i in range(args.rounds)
            ]
            list_times = [
                timed(lambda: list(instances.list(project=PROJECT, zone=ZONE)))
                for _ in range(args.rounds)
            ]
            print(
                f"localgce, google-cloud-compute REST client, {args.instances} instances "
                f"(ssh {'on' if args.ssh else 'off'}), {os.cpu_count()} CPUs"
            )
            report("insert", insert_times)
            report("get", get_times)
            report("list", list_times)
        finally:
            daemon.stop(state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
