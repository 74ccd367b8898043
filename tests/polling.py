"""The one way a test waits for something: poll a predicate until it is truthy or a deadline.

A plain module next to tests/conftest.py (that directory is on sys.path under pytest's default
import mode), so every test area imports it as ``from polling import wait_for``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
DEFAULT_TIMEOUT_SECONDS = 60.0


def wait_for(
    predicate: Callable[[], T],
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    what: str = "condition",
    *,
    first_delay_seconds: float = 0.05,
    max_delay_seconds: float = 0.5,
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Raises AssertionError naming ``what`` once ``timeout_seconds`` have passed; ``what`` may be
    a callable, called then, so the message can show the last state seen.
    """
    deadline = time.monotonic() + timeout_seconds
    delay = first_delay_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {detail}")
        time.sleep(delay)
        delay = min(delay * 1.5, max_delay_seconds)
