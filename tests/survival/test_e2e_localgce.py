"""End to end on localgce (acceptance 1-4): the real tasks, the real startup script, the real
trainer, against the emulator. One emulator for the module; each test names its own job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from polling import wait_for

from survival.config import LOCAL_PROJECT

REPO = Path(__file__).resolve().parents[2]
TRAIN_STEPS = 3000
CHECKPOINT_STEPS = 500

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cloud():
    from localgce import daemon
    from localgce.client import ensure_running
    from survival.backend import compute_for, ensure_bucket, storage_client

    # Not under pytest's 0700 tmp dirs: the guest may drop to an unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="survival-e2e-"))
    root.chmod(0o755)
    state = root / "state"
    endpoints = ensure_running(state, grace_spot_seconds=20)
    _register_kit_venv_image(endpoints, state, "gce-survival-kit")
    storage = storage_client(LOCAL_PROJECT, endpoints["storage"])
    ensure_bucket(storage, "survival-jobs", create=True)
    compute = compute_for(LOCAL_PROJECT, endpoints)
    # For the trainer code run in subprocesses (and by the tasks' own children): the emulator.
    env = {
        **os.environ,
        "INVOKE_SURVIVAL_LOCAL_STATE_DIR": str(state),
        "INVOKE_SURVIVAL_SSH_KEY_PATH": str(root / "ssh" / "google_compute_engine"),
        "STORAGE_EMULATOR_HOST": endpoints["storage"],
        "GOOGLE_CLOUD_PROJECT": LOCAL_PROJECT,
    }
    try:
        yield {"root": root, "state": state, "endpoints": endpoints, "compute": compute, "env": env}
    finally:
        daemon.stop(state)


def _register_kit_venv_image(endpoints, state: Path, family: str) -> None:
    """A local image whose venv/ is this test run's own environment. The Packer bake of a fresh
    environment is tested on its own (test_bake_local.py); here it would only add a minute."""
    from google.cloud import compute_v1

    from localgce.client import compute_client_options

    image_dir = state / "kit-image"
    image_dir.mkdir(parents=True)
    (image_dir / "venv").symlink_to(Path(sys.prefix))
    images = compute_v1.ImagesClient(**compute_client_options(endpoints))
    image = compute_v1.Image(
        name=f"{family}-kit-venv", family=family, raw_disk=compute_v1.RawDisk(source=str(image_dir))
    )
    images.insert(project=LOCAL_PROJECT, image_resource=image).result(timeout=120)


def invoke(cloud, *args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, env=cloud["env"],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _listening_pids(port: int) -> list[int]:
    """Pids of processes with a TCP socket listening on 127.0.0.1:port (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            inodes.add(f"socket:[{inode}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            pids.append(int(proc.name))
    return pids


def _download(env, url, target):
    subprocess.run(
        [sys.executable, "-c",
         "import sys; from trainer.storage import open_store; from pathlib import Path; "
         "open_store(sys.argv[1]).download(sys.argv[2], Path(sys.argv[3]))",
         url.rsplit("/", 1)[0], url.rsplit("/", 1)[1], str(target)],
        env=env, check=True,
    )  # fmt: skip


def test_train_survives_two_preemptions_and_matches_uninterrupted_run(cloud, tmp_path):
    result = invoke(
        cloud, "train", "--branch", "exp1", "--chaos", "2", "--name", "e2e-chaos",
        "--train-steps", str(TRAIN_STEPS), "--checkpoint-steps", str(CHECKPOINT_STEPS),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    # The default code delivery: a bundle in the job bucket, which the VM downloads and checks.
    pushed = re.search(
        r"push-code: exp1 -> ([0-9a-f]{40}) \((gs://survival-jobs/code/\1\.bundle)\)", out
    )
    assert pushed, out[:3000]
    assert f"fetched commit {pushed.group(1)[:12]} from {pushed.group(2)}" in out
    zone = re.search(r"train: created e2e-chaos in (\S+) ", out).group(1)
    metadata = cloud["compute"].get_instance(zone, "e2e-chaos").metadata
    assert metadata["trainer-bundle"] == pushed.group(2) and "trainer-repo" not in metadata
    assert metadata["trainer-commit"] == pushed.group(1)
    assert out.count("chaos: preempting e2e-chaos") == 2
    assert "restart 2" in out
    summary = out[out.index("job e2e-chaos: DONE") :]
    assert "attempts     3" in summary and "preemptions  2" in summary
    assert "lost steps   0" in summary and "cost ESTIMATE" in summary

    # The same job, uninterrupted, in a local job dir: the exported models must be equal.
    local = tmp_path / "local-job"
    subprocess.run(
        [sys.executable, "-m", "trainer.examples.keras_digits", "--job-dir", str(local),
         "--train-steps", str(TRAIN_STEPS), "--checkpoint-steps", str(CHECKPOINT_STEPS),
         "--seed", "0", "--hparams-json", "{}"],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    remote_model = tmp_path / "remote.keras"
    _download(cloud["env"], "gs://survival-jobs/jobs/e2e-chaos/export/model.keras", remote_model)
    import keras
    import numpy as np

    ours = keras.saving.load_model(remote_model).get_weights()
    theirs = keras.saving.load_model(local / "export" / "model.keras").get_weights()
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)

    status = invoke(cloud, "status")
    assert status.returncode == 0, status.stderr
    assert "e2e-chaos" in status.stdout and f"{TRAIN_STEPS}/{TRAIN_STEPS}" in status.stdout
    png = tmp_path / "timeline.png"
    plot = invoke(cloud, "jobs.plot", "e2e-chaos", "--output", str(png))
    assert plot.returncode == 0, plot.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


HOSTILE = [
    ("trainer-branch", "exp1;touch {marker}"),
    ("trainer-branch", "$(touch {marker})"),
    ("trainer-branch", "`touch {marker}`"),
    ("trainer-branch", "exp1\ntouch {marker}"),
    ("hparams", '{{"optimizer": "adam\\"; touch {marker}; \\""}}'),
    ("hparams", '{{"x": "$(touch {marker})"}}'),
    ("trainer-module", "trainer.examples.keras_digits'; touch {marker}; '"),
    # Under GCE's 256 KiB metadata limit but over startup.sh's 64 KiB one.
    ("hparams", '{{"x": "' + "a" * (200 << 10) + '"}}'),
]


def test_one_megabyte_value_is_refused_before_any_instance(cloud):
    from survival.errors import ConfigError
    from survival.instance_spec import JobSpec, MachineSpec, build_instance

    job = JobSpec(name="huge", repo_url="file:///r.git", branch="exp1", commit="c" * 40,
                  module="m", job_dir="gs://survival-jobs/jobs/huge", train_steps=1,
                  checkpoint_steps=1, seed=0, hparams_json="{}")  # fmt: skip
    compute = cloud["compute"]
    image = compute.image_from_family("gce-survival-kit")
    machine = MachineSpec("us-central1-a", "n1-standard-4", "", 0, "spot", image, 10, "default",
                          ("s",))  # fmt: skip
    body = build_instance(machine, job, {"trainer-branch": "x" * (1 << 20)})
    with pytest.raises(ConfigError, match="at most 256 KiB"):
        compute.insert_instance("us-central1-a", body)
    assert compute.get_instance("us-central1-a", "huge") is None


@pytest.mark.parametrize(("index", "key_value"), list(enumerate(HOSTILE)))
def test_hostile_metadata_fails_cleanly(cloud, index, key_value, monkeypatch):
    from survival.instance_spec import JobSpec, MachineSpec, build_instance
    from survival.progress import open_job_dir

    key, template = key_value
    marker = cloud["root"] / f"injected-{index}"
    name = f"hostile-{index}"
    job = JobSpec(
        name=name, repo_url="file:///nonexistent/trainer.git", branch="exp1", commit="a" * 40,
        module="trainer.examples.keras_digits", job_dir=f"gs://survival-jobs/jobs/{name}",
        train_steps=10, checkpoint_steps=5, seed=0, hparams_json="{}",
    )  # fmt: skip
    compute = cloud["compute"]
    image = compute.image_from_family("gce-survival-kit")
    machine = MachineSpec("us-central1-a", "n1-standard-4", "nvidia-tesla-t4", 0, "spot", image,
                          10, "default", ("scope",))  # fmt: skip
    body = build_instance(machine, job, {key: template.format(marker=marker)})
    # open_job_dir reads gs:// through google-cloud-storage, configured from the environment.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", cloud["endpoints"]["storage"])
    compute.insert_instance("us-central1-a", body)
    job_dir = open_job_dir(job.job_dir)
    failed = wait_for(
        job_dir.failed,
        120,
        what=lambda: (
            f"FAILED in {job.job_dir}; serial:\n"
            + compute.serial_output("us-central1-a", name)[0][-2000:]
        ),
    )
    assert failed is not None, compute.serial_output("us-central1-a", name)[0][-2000:]
    assert "validation error" in failed["reason"] and key in failed["reason"]
    serial = compute.serial_output("us-central1-a", name)[0]
    assert "validation error" in serial
    assert not marker.exists()
    compute.delete_instance("us-central1-a", name)


def test_missing_branch_with_no_push_fails_before_any_instance(cloud):
    result = invoke(cloud, "train", "--branch", "never-pushed", "--no-push", "--name", "nobranch")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: branch 'never-pushed'")
    assert cloud["compute"].get_instance("us-central1-a", "nobranch") is None


def test_capacity_error_moves_to_the_next_zone(cloud):
    from localgce.client import set_config

    set_config(cloud["endpoints"], exhausted_zones=["us-central1-a"])
    try:
        result = invoke(
            cloud, "train", "--branch", "exp1", "--example", "sklearn_digits", "--name", "fullzone",
            "--train-steps", "20", "--checkpoint-steps", "10", "--no-follow",
        )  # fmt: skip
    finally:
        set_config(cloud["endpoints"], exhausted_zones=[])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no capacity in us-central1-a (ZONE_RESOURCE_POOL_EXHAUSTED)" in result.stdout
    compute = cloud["compute"]
    assert compute.get_instance("us-central1-a", "fullzone") is None
    assert compute.get_instance("us-central1-b", "fullzone") is not None
    assert invoke(cloud, "down", "fullzone").returncode == 0


EXPECTED = {
    "spot": {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
             "onHostMaintenance": "TERMINATE", "automaticRestart": False},
    "preemptible": {"preemptible": True, "onHostMaintenance": "TERMINATE",
                    "automaticRestart": False},
    "standard": {"provisioningModel": "STANDARD", "automaticRestart": True},
}  # fmt: skip


@pytest.mark.parametrize("gpus", [0, 1])
@pytest.mark.parametrize("provisioning", ["spot", "preemptible", "standard"])
def test_instance_resource_captured_at_localgce(cloud, provisioning, gpus):
    from survival.instance_spec import JobSpec, MachineSpec, build_instance

    name = f"shape-{provisioning}-{gpus}"
    job = JobSpec(name=name, repo_url="file:///r.git", branch="exp1", commit="b" * 40,
                  module="m", job_dir=f"gs://survival-jobs/jobs/{name}", train_steps=1,
                  checkpoint_steps=1, seed=0, hparams_json="{}", keep_alive=True)  # fmt: skip
    compute = cloud["compute"]
    image = compute.image_from_family("gce-survival-kit")
    scopes = ("https://www.googleapis.com/auth/devstorage.read_write",
              "https://www.googleapis.com/auth/logging.write")  # fmt: skip
    machine = MachineSpec("us-central1-c", "n1-standard-4", "nvidia-tesla-t4", gpus,
                          provisioning, image, 20, "default", scopes)  # fmt: skip
    compute.insert_instance("us-central1-c", build_instance(machine, job))
    try:
        raw = compute.get_instance("us-central1-c", name).raw
        sched = raw["scheduling"]
        for field, value in EXPECTED[provisioning].items():
            assert sched.get(field) == value, (field, sched)
        if provisioning == "standard":
            assert sched["onHostMaintenance"] == ("TERMINATE" if gpus else "MIGRATE")
        assert raw["machineType"].endswith("/zones/us-central1-c/machineTypes/n1-standard-4")
        accel = raw.get("guestAccelerators", [])
        if gpus:
            assert accel[0]["acceleratorType"].endswith("/acceleratorTypes/nvidia-tesla-t4")
            assert accel[0]["acceleratorCount"] == 1
        else:
            assert accel == []
        account = raw["serviceAccounts"][0]
        assert sorted(account["scopes"]) == sorted(scopes)
        assert "https://www.googleapis.com/auth/cloud-platform" not in account["scopes"]
        items = {i["key"]: i["value"] for i in raw["metadata"]["items"]}
        assert items["trainer-commit"] == "b" * 40 and items["keep-alive"] == "true"
        assert raw["labels"] == {"survival-job": name}
    finally:
        compute.delete_instance("us-central1-c", name)


def test_ssh_logs_over_fabric_then_serial_fallback(cloud):
    # keep-alive: the VM stays RUNNING (with its sshd) after the job is DONE.
    started = invoke(
        cloud, "train", "--branch", "exp1", "--example", "sklearn_digits", "--name", "sshjob",
        "--train-steps", "20", "--checkpoint-steps", "10", "--keep-alive", "--no-follow",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    seen = []

    def logs_once_done():
        seen.append(invoke(cloud, "ssh-logs", "sshjob"))
        return seen[-1] if "INFO trainer: DONE" in seen[-1].stdout else None

    result = wait_for(
        logs_once_done,
        180,
        what=lambda: (
            f"DONE in `invoke ssh-logs sshjob`; last:\n{seen[-1].stdout[-2000:]}"
            f"{seen[-1].stderr[-2000:]}"
        ),
        first_delay_seconds=1,
        max_delay_seconds=1,
    )
    assert result.returncode == 0, result.stderr
    assert "falling back" not in result.stdout, result.stdout[-2000:]
    assert "INFO trainer: DONE" in result.stdout
    assert Path(cloud["env"]["INVOKE_SURVIVAL_SSH_KEY_PATH"]).exists()

    # Stop the instance's sshd for real (as if it had crashed): `invoke ssh-logs` must fall back to
    # the serial console and say so.
    info = cloud["compute"].get_instance("us-central1-a", "sshjob")
    port = int(info.nat_ip.rsplit(":", 1)[1])
    sshd_pids = _listening_pids(port)
    assert sshd_pids, f"nothing listens on the published ssh port {port}"
    for pid in sshd_pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _listening_pids(port), 30, what=f"nothing listening on port {port}")
    assert not _listening_pids(port), "sshd still listening after SIGKILL"
    fallback = invoke(cloud, "ssh-logs", "sshjob")
    assert fallback.returncode == 0, fallback.stderr
    assert "falling back to the serial console" in fallback.stdout, fallback.stdout[:500]
    assert "startup-script:" in fallback.stdout
    assert "INFO trainer: DONE" in fallback.stdout
    down = invoke(cloud, "down", "sshjob")
    assert down.returncode == 0 and "deleted sshjob" in down.stdout


def test_down_all_deletes_every_job_instance_and_keeps_job_dirs(cloud):
    from survival.instance_spec import JOB_LABEL

    zones = ("us-central1-a", "us-central1-b", "us-central1-c")
    before = cloud["compute"].list_instances(zones, JOB_LABEL)
    assert before, "the tests above leave job instances behind for this test to delete"
    result = invoke(cloud, "down", "--all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("deleted ") == len(before)
    assert cloud["compute"].list_instances(zones, JOB_LABEL) == []
    # Job dirs are kept: the chaos job's DONE marker is still readable.
    status = subprocess.run(
        [sys.executable, "-m", "trainer.jobdir", "is-done", "gs://survival-jobs/jobs/e2e-chaos"],
        env=cloud["env"], check=False,
    )  # fmt: skip
    assert status.returncode == 0
    nothing = invoke(cloud, "down")
    assert nothing.returncode != 0
