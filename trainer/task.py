"""What an example implements. The runner (trainer/runner.py) owns everything else."""

from __future__ import annotations

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

    def restore(self, directory: Path) -> None:
        """Load what ``save`` wrote."""
        raise NotImplementedError

    def export(self, directory: Path) -> str:
        """Write the final model into ``directory``; return its file name."""
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        """Library versions recorded in each checkpoint manifest."""
        return {}
