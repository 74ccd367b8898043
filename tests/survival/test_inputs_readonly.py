"""Commands that only look at or end jobs never start localgce (they say it is not running and
how to start it), train refuses a state dir whose parent is missing before starting anything, a
corrupt job record is one unreadable row of `invoke status`, and `jobs.plot` of an unknown job
says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Config, Context, Exit

from localgce import daemon
from survival import cli, jobstore
from survival.backend import Cloud
from survival.config import DEFAULTS, Settings
from survival.instance_spec import JobSpec, MachineSpec
from survival.request import TrainRequest
from trainer.jobdir import JobDir


@pytest.fixture
def no_daemon_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a read-only command started localgce")

    monkeypatch.setattr(daemon, "start", refuse)


def context(state_dir: Path) -> Context:
    config = Config(overrides={"survival": {"local_state_dir": str(state_dir)}})
    config.load_collection({"survival": DEFAULTS})
    return Context(config)


def one_line_exit(call) -> str:
    with pytest.raises(Exit) as stop:
        call()
    message = stop.value.message
    assert stop.value.code == 1 and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "command",
    [
        lambda c: cli.status(c),
        lambda c: cli.images_list(c, None, None),
        lambda c: cli.ssh_logs(c, "job1", False),
        lambda c: cli.preempt(c, "job1"),
        lambda c: cli.plot(c, "job1", None),
        lambda c: cli.watch(c, "job1"),
        lambda c: cli.down(c, "job1", False),
    ],
    ids=["status", "images", "ssh-logs", "preempt", "plot", "watch", "down"],
)
def test_read_only_commands_say_localgce_is_not_running(tmp_path, no_daemon_start, command):
    message = one_line_exit(lambda: command(context(tmp_path / "state")))
    assert "localgce is not running" in message
    assert "invoke localgce.start" in message and "make demo" in message
    assert not (tmp_path / "state").exists()


def test_config_never_starts_localgce(tmp_path, no_daemon_start, capsys):
    cli.show_config(context(tmp_path / "state"))
    assert "local_state_dir" in capsys.readouterr().out
    assert not (tmp_path / "state").exists()


def test_train_refuses_a_state_dir_whose_parent_is_missing(tmp_path, no_daemon_start):
    state_dir = tmp_path / "missing" / "state"
    req = TrainRequest(
        branch="exp1", example="keras_digits", train_steps=10, checkpoint_steps=5, seed=0,
        hparams=(), name=None, zone=None, gpu=None, machine_type=None, provisioning=None,
        follow=False, chaos=0, push=True, keep_alive=False,
    )  # fmt: skip
    message = one_line_exit(lambda: cli.train(context(state_dir), req))
    assert f"its parent {state_dir.parent} does not exist" in message
    assert not state_dir.parent.exists()


class FakeCompute:
    def list_instances(self, zones, label):
        return []


class LocalDirCloud(Cloud):
    """A cloud whose job dirs are local folders under ``root``."""

    root: Path = Path()

    def open_job_dir(self, url: str) -> JobDir:
        return JobDir.open(str(self.root / url.rpartition("/")[2]))


def fake_cloud(monkeypatch, tmp_path: Path) -> Settings:
    current = cli.settings(context(tmp_path / "state"))
    cloud = LocalDirCloud(current, FakeCompute())
    cloud.root = tmp_path / "jobdirs"
    monkeypatch.setattr(cli, "open_cloud", lambda *args, **kwargs: cloud)
    return current


def test_a_corrupt_job_record_is_one_unreadable_row(tmp_path, monkeypatch, capsys):
    current = fake_cloud(monkeypatch, tmp_path)
    job = JobSpec(
        name="good-job", repo_url="file:///r/trainer.git", branch="exp1", commit="a" * 40,
        module="trainer.examples.keras_digits", job_dir="gs://b/jobs/good-job", train_steps=100,
        checkpoint_steps=10, seed=3, hparams_json="{}",
    )  # fmt: skip
    machine = MachineSpec(
        zone="us-central1-a", machine_type="n1-standard-4", gpu_type="", gpu_count=0,
        provisioning="spot", image="img", disk_size_gb=50, service_account="default",
        scopes=("s",),
    )  # fmt: skip
    jobstore.save(current.local_state_dir, job, machine, {})
    folder = Path(current.local_state_dir) / "jobs"
    (folder / "cut-short.json").write_text('{"job": {"name": "cut-sh')
    (folder / "wrong-shape.json").write_text("[1, 2]")

    rows = cli.status(context(tmp_path / "state"))

    by_name = {row[0]: row for row in rows}
    assert set(by_name) == {"good-job", "cut-short", "wrong-shape"}
    for name in ("cut-short", "wrong-shape"):
        assert f"UNREADABLE record {folder / name}.json" in by_name[name][2]
    assert "UNREADABLE" not in " ".join(by_name["good-job"])
    assert "cut-short" in capsys.readouterr().out


def test_plot_of_an_unknown_job_says_it_is_unknown(tmp_path, monkeypatch):
    fake_cloud(monkeypatch, tmp_path)
    message = one_line_exit(lambda: cli.plot(context(tmp_path / "state"), "nope", None))
    assert "unknown job 'nope'" in message
    assert not Path("nope-timeline.png").exists()
