"""What an example implements. The runner (trainer/runner.py) owns everything else."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from trainer.hparams import HParam


class Task:
    """Subclass this: build state in __init__, then one step, save, restore and export.

    ``train_step(step)`` must depend only on the state and ``step`` (use
    ``trainer.data.batch_indices``) so that a restored run continues bit for bit.
    """

    framework: ClassVar[str] = "unknown"
    hparams: ClassVar[dict[str, HParam]] = {}
    default_train_steps: ClassVar[int] = 1000
    default_checkpoint_steps: ClassVar[int] = 100
    # Whether periodic saves run in the background by default (--async-checkpoints). On where
    # ``snapshot`` is a memory copy much cheaper than ``save``: bench/checkpoint_scale.py.
    default_async_checkpoints: ClassVar[bool] = False

    def __init__(self, hparams: dict[str, Any], seed: int, data_dir: str | None) -> None:
        self.hp = hparams
        self.seed = seed
        self.data_dir = data_dir

    def train_step(self, step: int) -> dict[str, float]:
        """Train on batch ``step``; return metrics (at least ``loss``) as plain floats."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Write every piece of state that affects the result into ``directory``."""
        raise NotImplementedError

    def snapshot(self) -> Callable[[Path], None]:
        """Capture the state as it is now, for an asynchronous save; return a function that
        writes what ``save`` would have written at this moment into a directory.

        The runner calls ``snapshot`` between steps, goes back to training, and calls the
        returned function from its one background thread, while ``train_step`` keeps changing
        the live state: the capture must not share mutable memory with it. The runner never
        calls ``snapshot`` while the writer of an earlier one may still run, so a capture may
        reuse the buffers of the previous one. Override it with a copy to host memory (cheap);
        this default saves now into a temporary directory of the process (the trainer's
        scratch dir) and only moves the files later.
        """
        captured = Path(tempfile.mkdtemp(prefix="snapshot-"))
        self.save(captured)

        def write(directory: Path) -> None:
            try:
                for path in sorted(captured.iterdir()):
                    shutil.move(path, directory / path.name)
            finally:
                shutil.rmtree(captured, ignore_errors=True)

        return write

    def restore(self, directory: Path) -> None:
        """Load what ``save`` wrote."""
        raise NotImplementedError

    def export(self, directory: Path) -> str:
        """Write the final model into ``directory``; return its file name."""
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        """Library versions recorded in each checkpoint manifest."""
        return {}
