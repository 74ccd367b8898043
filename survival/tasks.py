"""The Invoke tasks: names, flags and help. Each body calls into survival/cli.py, imported inside
the task so `invoke --list` imports nothing heavy (no cloud SDK, no localgce client).

Settings come from the `survival:` section of invoke.yaml, INVOKE_SURVIVAL_* env vars and flags;
`ns.configure` below supplies the code defaults.
"""

from __future__ import annotations

import os

from invoke import Collection, Exit, task
from invoke.executor import Executor

from survival.config import DEFAULTS, check_env_vars
from survival.errors import ConfigError
from survival.request import DEFAULT_CHECKPOINT_STEPS, DEFAULT_TRAIN_STEPS, TrainRequest

_STATE_DIR_HELP = "localgce state dir (default: survival.local_state_dir, i.e. .localgce)"
_BACKEND_HELP = "local or gce; default survival.backend"


# --- localgce --------------------------------------------------------------------------------
@task(
    name="start",
    help={
        "state_dir": _STATE_DIR_HELP,
        "grace_spot_seconds": "Spot/preemptible shutdown window (default 30, GCE's value)",
        "grace_standard_seconds": "standard VM shutdown window (default 120, GCE's value)",
        "maintenance_notice_seconds": "maintenance-event notice before the stop (default 3600)",
        "preemption_rate_per_hour": "random preemptions per Spot VM per hour (default 0: none)",
        "no_ssh": "do not run a per-instance sshd (default: run one when sshd is installed)",
    },
)
def localgce_start(
    c,
    state_dir=None,
    grace_spot_seconds=None,
    grace_standard_seconds=None,
    maintenance_notice_seconds=None,
    preemption_rate_per_hour=None,
    no_ssh=False,
):
    """Start the local Compute Engine emulator in the background (no-op if it runs)."""
    from survival import cli

    knobs = {
        "grace_spot_seconds": grace_spot_seconds,
        "grace_standard_seconds": grace_standard_seconds,
        "maintenance_notice_seconds": maintenance_notice_seconds,
        "preemption_rate_per_hour": preemption_rate_per_hour,
    }
    cli.localgce_start(c, state_dir, knobs, ssh=not no_ssh)


@task(name="stop", help={"state_dir": _STATE_DIR_HELP})
def localgce_stop(c, state_dir=None):
    """Stop the emulator and every instance process it runs."""
    from survival import cli

    cli.localgce_stop(c, state_dir)


@task(name="status", help={"state_dir": _STATE_DIR_HELP})
def localgce_status(c, state_dir=None):
    """Show the emulator's endpoints, or fail if it is not running."""
    from survival import cli

    cli.localgce_status(c, state_dir)


# --- jobs ------------------------------------------------------------------------------------
@task(name="config")
def survival_config(c):
    """Print the effective survival settings and where each came from."""
    from survival import cli

    cli.show_config(c)


@task(
    help={
        "backend": _BACKEND_HELP,
        "engine": "batch: also check the Cloud Batch API (for --engine batch); default vms",
    }
)
def doctor(c, backend=None, engine="vms"):
    """Preflight: credentials, APIs, GPU quotas and zones, image, bucket, network; ✓/✗ + fixes."""
    from survival import cli

    cli.doctor(c, backend, engine)


_INCLUDE_HELP = (
    "FILE to push although it looks like a secret (.env*, *.pem, *.key, id_rsa*, "
    "*credentials*.json, *.p12 are left out otherwise); repeatable"
)


@task(
    iterable=["include"],
    help={
        "branch": "branch the snapshot is pushed as (required), e.g. exp1",
        "include": _INCLUDE_HELP,
    },
)
def push_code(c, branch, include=None):
    """Snapshot the working tree (uncommitted changes too) and push it: a bundle in the bucket."""
    from survival import cli

    cli.push_code(c, branch, tuple(include or ()))


@task(
    iterable=["hparam", "include"],
    help={
        "branch": "branch to push and train (required), e.g. exp1",
        "example": "trainer to run: keras_digits (default), sklearn_digits or numpy_wide",
        "train_steps": f"total training steps (default {DEFAULT_TRAIN_STEPS})",
        "checkpoint_steps": "periodic checkpoint every K steps; 0: only notice and final ones "
        f"(default {DEFAULT_CHECKPOINT_STEPS})",
        "seed": "random seed; the same seed gives the same model (default 0)",
        "hparam": "hyperparameter NAME=VALUE, one the example declares (checked against its "
        "type and range before anything is created); repeatable",
        "name": "job and instance name (default: BRANCH-UTCDATE-TIME-xxxx, xxxx random)",
        "zone": "zone to try first (default: survival.zones in order)",
        "gpu": "GPUs as TYPE:COUNT, e.g. nvidia-tesla-t4:1, or none (default: survival.gpu_*)",
        "machine_type": "machine type (default: survival.machine_type)",
        "provisioning": "spot | preemptible | standard | flex-start (default: "
        "survival.provisioning); flex-start needs --max-run-hours",
        "max_run_hours": "stop each VM after H hours of running, a cost cap (flex-start: delete "
        "it; at most 168); 0: no limit (default: survival.max_run_hours)",
        "follow": "supervise until DONE: stream logs, restart after preemptions (default on)",
        "chaos": "preempt the instance N times at random steps, to rehearse (default 0); "
        "with --engine batch the command returns after the N preemptions",
        "push": "push the working tree first (default on); --no-push trains the pushed branch",
        "keep_alive": "leave the VM running after the job ends (default off)",
        "include": _INCLUDE_HELP,
        "engine": "vms (default): a Spot VM this command supervises; batch: one Cloud Batch "
        "job, which Batch retries after preemptions, so the command returns once it is queued",
    },
)
def train(
    c,
    branch,
    example="keras_digits",
    # The numbers are taken as text (None: not given) and checked by TrainRequest.from_flags:
    # Invoke's own int parsing would answer `--train-steps abc` with a traceback.
    train_steps=None,
    checkpoint_steps=None,
    seed=None,
    hparam=None,
    name=None,
    zone=None,
    gpu=None,
    machine_type=None,
    provisioning=None,
    max_run_hours=None,
    follow=True,
    chaos=None,
    push=True,
    keep_alive=False,
    include=None,
    engine="vms",
):
    """Push the code, launch a Spot VM that trains BRANCH, and bring it back until DONE."""
    try:
        request = TrainRequest.from_flags(
            branch=branch, example=example, train_steps=train_steps,
            checkpoint_steps=checkpoint_steps, seed=seed, hparams=tuple(hparam or ()), name=name,
            zone=zone, gpu=gpu, machine_type=machine_type, provisioning=provisioning,
            max_run_hours=max_run_hours,
            follow=follow, chaos=chaos, push=push, keep_alive=keep_alive,
            include=tuple(include or ()),
        )  # fmt: skip
    except ConfigError as err:
        raise Exit(f"error: {err}", code=1) from None
    from survival import cli

    cli.train(c, request, engine)


@task(
    name="resume",
    help={
        "name": "the sweep (see `invoke status`)",
        "parallelism": "at most P points train at once (default: all that are left)",
    },
)
def sweep_resume(c, name, parallelism=None):
    """Submit a new Batch job for the sweep's points that are not DONE."""
    from survival.request import whole_number

    try:
        width = None if parallelism is None else whole_number("--parallelism", parallelism, 1)
    except ConfigError as err:
        raise Exit(f"error: {err}", code=1) from None
    from survival import sweep_cli

    sweep_cli.resume(c, name, width)


@task(
    name="report",
    help={
        "name": "the sweep (see `invoke status`)",
        "output": "directory for report.csv and report.png (default NAME-report)",
    },
)
def sweep_report(c, name, output=None):
    """Table of the sweep's points, best first by the example's metric; report.csv and a PNG."""
    from survival import sweep_cli

    sweep_cli.report(c, name, output)


@task(help={"name": "job name (see `invoke status`)"})
def watch(c, name):
    """Supervise a job started with --no-follow until DONE; follow a Batch job's progress."""
    from survival import cli

    cli.watch(c, name)


@task(
    name="ssh-logs",
    positional=["name"],
    help={
        "name": "job name (see `invoke status`)",
        "follow": "keep streaming new lines (tail -F) until Ctrl-C",
    },
)
def ssh_logs(c, name, follow=False):
    """Show the trainer log over SSH (Fabric); falls back to the serial console."""
    from survival import cli

    cli.ssh_logs(c, name, follow)


# Invoke has no optional positionals (a positional argument is required), so NAME is a flag:
# `invoke status --name NAME` (or -n NAME).
@task(
    help={"name": "a job, or a sweep to show one row per point (default: every job and sweep)"},
)
def status(c, name=""):
    """Table of jobs and sweeps: zone, status, model, step, attempts, stops, lost steps, cost."""
    from survival import cli

    cli.status(c, name or None)


@task(
    iterable=["grid", "range_", "include"],
    help={
        "branch": "branch to push and train (required), e.g. exp1",
        "grid": "NAME=V1,V2,...: the points are the product of every --grid (repeatable), e.g. "
        "--grid learning_rate=0.01,0.03 --grid batch_size=32,64",
        "random": "N random points instead of the grid's product: each draws every --range "
        "value and picks each --grid value at random (seeded by --seed)",
        "range_": "NAME=LOW:HIGH[:lin|log] for --random, e.g. learning_rate=1e-4:1e-1:log",
        "parallelism": "at most P points train at once (default: all of them)",
        "engine": "batch: one Cloud Batch job, taskCount = points (returns once queued); "
        "vms (default): one supervised VM per point, this command supervises them",
        "example": "trainer to run: keras_digits (default), sklearn_digits or numpy_wide",
        "train_steps": f"training steps of each point (default {DEFAULT_TRAIN_STEPS})",
        "checkpoint_steps": f"periodic checkpoint every K steps (default "
        f"{DEFAULT_CHECKPOINT_STEPS})",
        "seed": "random seed of every point's training and of --random draws (default 0)",
        "name": "sweep name (default: BRANCH-UTCDATE-TIME-xxxx); its points are NAME/<index>",
        "zone": "zone to try first (default: survival.zones in order)",
        "gpu": "GPUs as TYPE:COUNT, or none (default: survival.gpu_*)",
        "machine_type": "machine type (default: survival.machine_type)",
        "provisioning": "spot | preemptible | standard (default: survival.provisioning)",
        "chaos": "rehearse preemptions: vms, each point's VM N times; batch, N task VMs at "
        "random steps, then return (default 0)",
        "push": "push the working tree first (default on)",
        "include": _INCLUDE_HELP,
    },
)
def sweep(
    c,
    branch,
    grid=None,
    random=None,
    range_=None,
    parallelism=None,
    engine="vms",
    example="keras_digits",
    train_steps=None,
    checkpoint_steps=None,
    seed=None,
    name=None,
    zone=None,
    gpu=None,
    machine_type=None,
    provisioning=None,
    chaos=None,
    push=True,
    include=None,
):
    """Train every point of a hyperparameter grid (or N random points), on Batch or on VMs."""
    from survival.request import whole_number

    try:
        request = TrainRequest.from_flags(
            branch=branch, example=example, train_steps=train_steps,
            checkpoint_steps=checkpoint_steps, seed=seed, hparams=(), name=name, zone=zone,
            gpu=gpu, machine_type=machine_type, provisioning=provisioning, follow=True,
            chaos=chaos, push=push, keep_alive=False, include=tuple(include or ()),
        )  # fmt: skip
        random_points = whole_number("--random", random, 0)
        width = None if parallelism is None else whole_number("--parallelism", parallelism, 1)
    except ConfigError as err:
        raise Exit(f"error: {err}", code=1) from None
    from survival import sweep_cli

    sweep_cli.sweep(
        c, request, grid=tuple(grid or ()), ranges=tuple(range_ or ()),
        random_points=random_points, parallelism=width, engine=engine,
    )  # fmt: skip


@task(help={"name": "job name to preempt now"})
def preempt(c, name):
    """Preempt a job's instance now (localgce preempt; GCE simulateMaintenanceEvent)."""
    from survival import cli

    cli.preempt(c, name)


# Invoke has no optional positionals, so NAME and --all share one argument: `invoke down NAME`
# fills it positionally, and a bare `--all` (its value is optional) arrives as True. Invoke strips
# the trailing underscore of `all_` from the flag name, so the flag is --all without the
# parameter shadowing the builtin.
@task(
    positional=["all_"],
    optional=["all_"],
    help={"all_": "job NAME to delete (positional), or --all for every job instance"},
)
def down(c, all_=None):
    """Delete a job's instance (NAME or --all); job dirs and checkpoints are kept."""
    from survival import cli

    cli.down(c, None if all_ is True else all_, all_ is True)


@task(
    name="plot",
    help={"name": "job name", "output": "PNG path (default NAME-timeline.png)"},
)
def jobs_plot(c, name, output=None):
    """Write a PNG timeline of loss vs step with preemptions and restarts marked."""
    from survival import cli

    cli.plot(c, name, output)


# --- images ----------------------------------------------------------------------------------
@task(
    help={
        "backend": "local (a localgce image directory, CPU build) or gce (a GPU image on GCE); "
        "default survival.backend",
        "family": "image family to add the image to; default survival.image_family",
        "gpu": "GPU of the gce build VM as TYPE:COUNT (e.g. nvidia-tesla-t4:1) or none; "
        "default survival.gpu_type:survival.gpu_count",
        "source_family": "gce base image family: debian-12 (default) or ubuntu-2204-lts",
        "os_login": "connect the gce build VM through OS Login (default off)",
        "dry_run": "print the packer commands and variables only; run nothing",
    }
)
def bake_image(c, backend=None, family=None, gpu=None, source_family="debian-12", os_login=False,
               dry_run=False):  # fmt: skip
    """Bake the training image with Packer (validate, build) and print its name and family."""
    from survival import cli

    cli.bake_image(c, backend=backend, family=family, gpu=gpu, source_family=source_family,
                   os_login=os_login, dry_run=dry_run)  # fmt: skip


@task(
    name="list",
    default=True,
    help={"family": "family to list; default survival.image_family", "backend": _BACKEND_HELP},
)
def images_list(c, family=None, backend=None):
    """List the family's images, newest first, deprecated ones marked."""
    from survival import cli

    cli.images_list(c, family, backend)


@task(
    help={
        "name": "the image to deprecate",
        "replacement": "image users should take instead (default: none named)",
        "backend": _BACKEND_HELP,
    }
)
def images_deprecate(c, name, replacement="", backend=None):
    """Deprecate image NAME so the family's newest-image lookup skips it."""
    from survival import cli

    cli.images_deprecate(c, name, replacement, backend)


class SurvivalExecutor(Executor):
    """Invoke's executor, checking the INVOKE_SURVIVAL_* env vars first.

    Invoke converts an env var to the type of the setting it overrides while it loads the
    environment, before any task runs: INVOKE_SURVIVAL_MAX_RESTARTS=abc would be a ValueError
    traceback from inside Invoke. invoke.yaml names this class (tasks.executor_class) so the same
    mistake is one line instead.
    """

    def execute(self, *tasks):
        try:
            check_env_vars(os.environ)
        except ConfigError as err:
            raise Exit(f"error: {err}", code=1) from None
        return super().execute(*tasks)


ns = Collection()
ns.configure({"survival": DEFAULTS})
ns.add_collection(Collection("localgce", localgce_start, localgce_stop, localgce_status))
for _task in (survival_config, doctor, push_code, train, watch, ssh_logs, status, preempt, down,
              bake_image):  # fmt: skip
    ns.add_task(_task)
ns.add_collection(Collection("jobs", jobs_plot))
# `invoke sweep ...` is the collection's default task; `invoke sweep.resume NAME` the other.
_sweeps = Collection("sweep", sweep_resume, sweep_report)
_sweeps.add_task(sweep, default=True)
ns.add_collection(_sweeps)
ns.add_collection(Collection("images", images_list, deprecate=images_deprecate))
