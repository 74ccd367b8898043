"""GCE Survival Kit tasks: `invoke --list` for the summaries, `invoke --help TASK` for the flags.

The tasks are defined in survival/tasks.py (their logic in survival/cli.py); Invoke finds them
here, through `ns`, and reads the project's settings from the invoke.yaml beside this file.
"""

from survival.tasks import ns

__all__ = ["ns"]
