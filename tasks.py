"""GCE Survival Kit tasks. Thin glue: every task calls into survival/ (or localgce/).

Run `invoke --list` for the summaries and `invoke --help TASK` for the flags.
"""

from __future__ import annotations

from invoke import Collection, Exit, task  # noqa: F401

# === localgce tasks (issue 3) ===

# === end localgce tasks ===

# === train/push-code/watch/ssh-logs/status/preempt/down/config/jobs tasks (issue 4) ===

# === end train tasks ===

# === bake-image/images tasks (issue 5) ===

# === end bake tasks ===

ns = Collection()
# === collection wiring: each section adds its tasks below ===
