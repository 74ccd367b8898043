"""Trainer exit codes: the contract with startup/startup.sh (see docs/architecture.md)."""

OK = 0  # reached --train-steps, or the job was already DONE
CRASHED = 1  # an unexpected error; startup.sh retries a bounded number of times
USAGE = 2  # bad command line (argparse uses 2 too)
CONFIG = 64  # hyperparameters differ from the job's checkpoints (EX_USAGE-like, sysexits DATAERR)
JOB_DIR_MISSING = 66  # the job dir's gs:// bucket does not exist (sysexits NOINPUT)
LEASE_HELD = 73  # another live writer holds the job dir's LEASE (sysexits CANTCREAT)
JOB_DIR_FULL = 74  # no space or quota left for the job dir or its scratch area (sysexits IOERR)
NOTICE_SAVED = 75  # stopped after saving on a preemption/shutdown notice (sysexits TEMPFAIL)
JOB_DIR_DENIED = 77  # the job dir is read-only or access is denied (sysexits NOPERM)
