"""Data order derived only from (seed, epoch) and the global step, so a resumed run sees
exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

import numpy as np


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the examples in batch number ``step`` (0-based, counted over all epochs)."""
    if batch_size <= 0 or batch_size > n_examples:
        raise ValueError(f"batch size must be in 1..{n_examples}, got {batch_size}")
    steps_per_epoch = n_examples // batch_size
    epoch, index = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return order[index * batch_size : (index + 1) * batch_size]


def load_digits(data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 in [0, 1], y int64). Default: scikit-learn's bundled 8x8 digits (no download).

    With ``data_dir``: ``DATA_DIR/digits.npz`` holding arrays ``X`` (n, features) and ``y`` (n,).
    """
    if data_dir:
        from pathlib import Path

        path = Path(data_dir) / "digits.npz"
        if not path.is_file():
            raise FileNotFoundError(f"--data-dir {data_dir}: expected {path} with arrays X and y")
        with np.load(path, allow_pickle=False) as data:
            features, labels = data["X"], data["y"]
    else:
        from sklearn.datasets import load_digits as sklearn_digits

        features, labels = sklearn_digits(return_X_y=True)
    features = np.asarray(features, dtype=np.float32)
    scale = float(features.max()) or 1.0
    return features / scale, np.asarray(labels, dtype=np.int64)
