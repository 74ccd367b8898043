"""Acceptance 1 and 6: random SIGKILLs (one inside a checkpoint write) and SIGTERMs, resume after
each, and the exported model equals an uninterrupted run's — locally and on gs://, with
synchronous and with asynchronous (background) periodic saves."""

from __future__ import annotations

import os
import random
import signal

import pytest

from tests.trainer import helpers
from tests.trainer.conftest import RUNS

KILLS = 5  # one of them lands inside a checkpoint write
TERMS = 2
SLOW_WRITE = {"SURVIVAL_TEST_SLOW_CHECKPOINT_SECONDS": "60"}  # the kill ends the wait


# Every example in both save modes, and each mode on both stores, in six runs rather than all
# twelve combinations: a run is 8 trainer processes (and TensorFlow imports for keras).
COMBINATIONS = [
    ("sklearn_digits", "sync", "local"),
    ("sklearn_digits", "async", "gs"),
    ("keras_digits", "sync", "gs"),
    ("keras_digits", "async", "local"),
    ("numpy_wide", "async", "local"),
    ("numpy_wide", "sync", "gs"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("example", "mode", "job_url"), COMBINATIONS, indirect=["job_url"])
def test_chaos_resume_is_exact(example, mode, job_url, reference):
    seed = int(os.environ.get("SURVIVAL_CHAOS_SEED", random.SystemRandom().randrange(2**32)))
    print(f"chaos seed {seed} (rerun with SURVIVAL_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    spec = RUNS[example]
    steps, ckpt = spec["steps"], spec["ckpt"]
    args = ["--train-steps", str(steps), "--checkpoint-steps", str(ckpt), "--seed", "7"]
    args += ["--log-steps", "1", "--lease-stale-seconds", "600", *spec["args"]]
    # Asynchronous periodic saves: a kill may also land while one is being written in the
    # background (the kill-in-write attempt always does).
    args.append("--async-checkpoints" if mode == "async" else "--no-async-checkpoints")
    plan = ["kill"] * (KILLS - 1) + ["term"] * TERMS
    rng.shuffle(plan)
    plan.insert(rng.randrange(len(plan) + 1), "kill-in-write")

    progress = 0  # a lower bound on the step each new attempt resumes from
    for action in plan:
        env = SLOW_WRITE if action == "kill-in-write" else None
        trainer = helpers.Trainer(example, job_url, *args, env=env)
        try:
            if action == "kill-in-write":
                trainer.wait_for(lambda line: "manifest pending (test hook)" in line)
                trainer.signal(signal.SIGKILL)
                assert trainer.finish() == -signal.SIGKILL
                continue
            # A random step between where this attempt resumes and two checkpoints later.
            target = rng.randint(progress + 1, min(steps - 2, progress + 2 * ckpt))
            reached = trainer.wait_for_step(target)
            trainer.signal(signal.SIGKILL if action == "kill" else signal.SIGTERM)
            code = trainer.finish()
            if action == "term":
                assert code == 75, trainer.text()
                progress = reached
            else:
                assert code == -signal.SIGKILL
                # With async saves the newest checkpoint may still have been in flight: then
                # this overestimates, which only makes the next attempt train a little longer.
                progress = max(progress, (reached // ckpt) * ckpt) if reached < steps else progress
        finally:
            trainer.kill()

    result = helpers.run(example, job_url, *args)
    assert result.returncode == 0, result.stderr
    helpers.assert_same_arrays(
        helpers.export_arrays(job_url, spec["framework"]), reference(example)
    )

    attempts = helpers.records(job_url, "attempts.jsonl")
    reasons = [a["end_reason"] for a in attempts]
    assert reasons.count("crashed") == KILLS
    assert reasons.count("notice-saved") == TERMS
    assert reasons[-1] == "completed" and len(attempts) == KILLS + TERMS + 1
    for attempt in attempts:
        if attempt["end_reason"] == "notice-saved":
            assert attempt["notice"] == "sigterm"
            assert attempt["end_step"] == attempt["notice_step"]  # 0 lost steps
    done = helpers.JobDir.open(job_url).done()
    assert done["steps"] == steps and done["attempts"] == KILLS + TERMS + 1
    assert done["notices"] == TERMS
