"""GCE Survival Kit tasks. Thin glue: every task calls into survival/ (or localgce/).

Run `invoke --list` for the summaries and `invoke --help TASK` for the flags.
"""

from __future__ import annotations

from invoke import Collection, Exit, task  # noqa: F401

# === localgce tasks (issue 3) ===

# === end localgce tasks ===

# === train/push-code/watch/ssh-logs/status/preempt/down/config/jobs tasks (issue 4) ===
# Logic lives in survival/cli.py (imported inside each task so `invoke --list` stays instant).
# Settings come from the `survival:` section of invoke.yaml, INVOKE_SURVIVAL_* env vars and flags.
# The working tree push-code snapshots: the directory of this tasks.py.
_WORKTREE = __file__


@task(name="config")
def survival_config(c):
    """Print the effective survival settings and where each came from."""
    from survival import cli

    cli.show_config(c)


@task(help={"branch": "trainer-repo branch to push the snapshot to (required), e.g. exp1"})
def push_code(c, branch):
    """Snapshot the working tree (uncommitted changes too) as a commit on BRANCH of the repo."""
    from survival import cli

    cli.push_code(c, _WORKTREE, branch)


@task(
    iterable=["hparam"],
    help={
        "branch": "trainer-repo branch to push and train (required), e.g. exp1",
        "example": "trainer to run: keras_digits (default) or sklearn_digits",
        "train_steps": "total training steps (default 300)",
        "checkpoint_steps": "periodic checkpoint every K steps (default 50)",
        "seed": "random seed; the same seed gives the same model (default 0)",
        "hparam": "hyperparameter NAME=VALUE (number, true/false or a word); repeatable",
        "name": "job and instance name (default: BRANCH-UTCDATE-TIME)",
        "zone": "zone to try first (default: survival.zones in order)",
        "gpu": "GPUs as TYPE:COUNT, e.g. nvidia-tesla-t4:1, or none (default: survival.gpu_*)",
        "machine_type": "machine type (default: survival.machine_type)",
        "provisioning": "spot | preemptible | standard (default: survival.provisioning)",
        "follow": "supervise until DONE: stream logs, restart after preemptions (default on)",
        "chaos": "preempt the instance N times at random steps, to rehearse (default 0)",
        "push": "push the working tree first (default on); --no-push trains the pushed branch",
        "keep_alive": "leave the VM running after the job ends (default off)",
    },
)
def train(
    c,
    branch,
    example="keras_digits",
    train_steps=300,
    checkpoint_steps=50,
    seed=0,
    hparam=None,
    name=None,
    zone=None,
    gpu=None,
    machine_type=None,
    provisioning=None,
    follow=True,
    chaos=0,
    push=True,
    keep_alive=False,
):
    """Push the code, launch a Spot VM that trains BRANCH, and bring it back until DONE."""
    from survival import cli

    cli.train(
        c,
        _WORKTREE,
        branch=branch,
        example=example,
        train_steps=int(train_steps),
        checkpoint_steps=int(checkpoint_steps),
        seed=int(seed),
        hparams=list(hparam or []),
        name=name,
        zone=zone,
        gpu=gpu,
        machine_type=machine_type,
        provisioning=provisioning,
        follow=follow,
        chaos=int(chaos),
        push=push,
        keep_alive=keep_alive,
    )


@task(help={"name": "job name (see `invoke status`)"})
def watch(c, name):
    """Supervise a job started with --no-follow: restart it after preemptions until DONE."""
    from survival import cli

    cli.watch(c, name)


@task(
    name="ssh-logs",
    help={
        "name": "job name (default: the job launched last from here)",
        "follow": "keep streaming new lines (tail -F) until Ctrl-C",
    },
)
def ssh_logs(c, name=None, follow=False):
    """Show the trainer log over SSH (Fabric); falls back to the serial console."""
    from survival import cli

    cli.ssh_logs(c, name, follow)


@task
def status(c):
    """Table of jobs: zone, status, model, step, attempts, preemptions, checkpoint age, cost."""
    from survival import cli

    cli.status(c)


@task(help={"name": "job name to preempt now"})
def preempt(c, name):
    """Preempt a job's instance now (localgce preempt; GCE simulateMaintenanceEvent)."""
    from survival import cli

    cli.preempt(c, name)


@task(help={"name": "job name to delete", "all": "delete every job instance"})
def down(c, name=None, all=False):
    """Delete a job's instance (or --all); job dirs and checkpoints are kept."""
    from survival import cli

    cli.down(c, name, all)


@task(
    name="plot",
    help={"name": "job name", "output": "PNG path (default NAME-timeline.png)"},
)
def jobs_plot(c, name, output=None):
    """Write a PNG timeline of loss vs step with preemptions and restarts marked."""
    from survival import cli

    cli.plot(c, name, output)


# === end train tasks ===

# === bake-image/images tasks (issue 5) ===

# === end bake tasks ===

ns = Collection()
# === collection wiring: each section adds its tasks below ===
# -- train tasks (issue 4)
from survival.config import DEFAULTS as _SURVIVAL_DEFAULTS  # noqa: E402

ns.configure({"survival": _SURVIVAL_DEFAULTS})
for _task in (survival_config, push_code, train, watch, ssh_logs, status, preempt, down):
    ns.add_task(_task)
ns.add_collection(Collection("jobs", jobs_plot))
