"""NumPy example whose checkpoint size is a knob: a wide MLP on the bundled 8x8 digits, trained
with Adam written out in NumPy, so the checkpoint path can be measured at 10 MB, 100 MB or 1 GB
without a framework in the way.

Run: python -m trainer.examples.numpy_wide --job-dir /tmp/job --checkpoint-mb 100 --train-steps 50

``--checkpoint-mb`` sets the hidden width: the checkpoint holds every weight and Adam's two
moments in float32 (12 bytes a parameter), so a depth-2 network is about 880 units wide at
10 MB, 2,850 at 100 MB and 9,100 at 1,000 MB. CPU training of the big ones is slow (about a
second a step at 1 GB on 2 cores); a few steps are enough to exercise the checkpoint path.

Exact resume: the initial weights come from ``--seed``, the batches from (seed, step)
(``trainer.data.batch_indices``), Adam's bias correction from the step, and there is no other
randomness; a checkpoint holds the weights and both moments, bit for bit. Results are bitwise
reproducible on the same kind of CPU (BLAS kernels differ between CPU generations).
Periodic saves are asynchronous by default: ``snapshot`` copies the arrays in memory
(bench/checkpoint_scale.py).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainer.data import batch_indices, load_digits
from trainer.hparams import HParam
from trainer.task import Task

MODEL_FILE = "model.npz"
SHAPES_FILE = "shapes.json"
N_FEATURES = 64
N_CLASSES = 10
BYTES_PER_PARAMETER = 12  # float32 weight + Adam's first and second moment
BYTES_PER_MB = 1_000_000
BETA_1, BETA_2, EPSILON = np.float32(0.9), np.float32(0.999), np.float32(1e-7)

# Module level, and nothing above imports the runner: `invoke train` imports this module to check
# --hparam values before a VM exists. 16,000 MB is about 1.3 billion parameters, already far
# beyond what a CPU trains; a batch cannot exceed the 1797 digits.
HPARAMS = {
    "checkpoint_mb": HParam(
        int, 10, "checkpoint size in MB (10^6 bytes); sets the hidden width", minimum=1,
        maximum=16000,
    ),
    "depth": HParam(int, 2, "hidden layers", minimum=1, maximum=16),
    "learning_rate": HParam(float, 1e-3, "Adam learning rate", minimum=1e-7, maximum=1.0),
    "batch_size": HParam(int, 32, "examples per step", minimum=1, maximum=1024),
}  # fmt: skip


def parameter_count(width: int, depth: int) -> int:
    """Weights and biases of a ``depth``-hidden-layer MLP of ``width`` units on the digits."""
    return (N_FEATURES + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * N_CLASSES


def width_for(checkpoint_mb: int, depth: int) -> int:
    """The hidden width whose checkpoint (weights and Adam moments) is closest to the size."""
    parameters = checkpoint_mb * BYTES_PER_MB / BYTES_PER_PARAMETER
    # parameter_count is a*w^2 + b*w + c in the width w.
    a, b, c = depth - 1, N_FEATURES + 1 + (depth - 1) + N_CLASSES, N_CLASSES - parameters
    width = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return max(1, round(width))


class NumpyWide(Task):
    """A wide MLP on scikit-learn's digits, Adam in NumPy, one mini-batch per step."""

    framework = "numpy"
    hparams = HPARAMS
    default_train_steps = 200
    default_checkpoint_steps = 50
    default_async_checkpoints = True  # a memory copy blocks far less: bench/checkpoint_scale.py

    def __init__(self, hparams, seed, data_dir):
        super().__init__(hparams, seed, data_dir)
        self.x, self.y = load_digits(data_dir)
        depth = hparams["depth"]
        width = width_for(hparams["checkpoint_mb"], depth)
        sizes = [self.x.shape[1], *([width] * depth), N_CLASSES]
        rng = np.random.default_rng([seed, 0x5EED])
        self.params: dict[str, np.ndarray] = {}
        for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            scale = np.float32(math.sqrt(2.0 / fan_in))  # He initialisation
            weight = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
            weight *= scale
            self.params[f"w{layer}"] = weight
            self.params[f"b{layer}"] = np.zeros(fan_out, dtype=np.float32)
        self.layers = len(sizes) - 1
        self.m = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.v = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._buffers: dict[str, np.ndarray] | None = None  # snapshot copies (see snapshot)

    # ----- training ------------------------------------------------------------------------
    def train_step(self, step):
        idx = batch_indices(len(self.y), self.hp["batch_size"], self.seed, step)
        x, y = self.x[idx], self.y[idx]
        activations, pre = [x], []
        for layer in range(self.layers):
            z = activations[-1] @ self.params[f"w{layer}"] + self.params[f"b{layer}"]
            pre.append(z)
            activations.append(np.maximum(z, 0) if layer < self.layers - 1 else z)
        logits = activations[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -float(log_probs[np.arange(len(y)), y].mean())
        grad = np.exp(log_probs)
        grad[np.arange(len(y)), y] -= 1
        grad /= np.float32(len(y))
        grads = {}
        for layer in reversed(range(self.layers)):
            grads[f"w{layer}"] = activations[layer].T @ grad
            grads[f"b{layer}"] = grad.sum(axis=0)
            if layer > 0:
                grad = (grad @ self.params[f"w{layer}"].T) * (pre[layer - 1] > 0)
        self._adam(grads, step + 1)
        return {"loss": loss}

    def _adam(self, grads: dict[str, np.ndarray], t: int) -> None:
        rate = self.hp["learning_rate"] * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        rate = np.float32(rate)
        for name, g in grads.items():
            m, v = self.m[name], self.v[name]
            m *= BETA_1
            m += g * (1 - BETA_1)
            v *= BETA_2
            g *= g
            g *= 1 - BETA_2
            v += g
            update = np.sqrt(v)
            update += EPSILON
            np.divide(m, update, out=update)
            update *= rate
            self.params[name] -= update

    # ----- checkpoints ---------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        state = {f"param-{n}": p for n, p in self.params.items()}
        state.update({f"adam_m-{n}": a for n, a in self.m.items()})
        state.update({f"adam_v-{n}": a for n, a in self.v.items()})
        return state

    @staticmethod
    def _write(state: dict[str, np.ndarray], directory: Path) -> None:
        for name, array in state.items():
            np.save(directory / f"{name}.npy", array, allow_pickle=False)
        shapes = {name: list(array.shape) for name, array in state.items()}
        (directory / SHAPES_FILE).write_text(json.dumps(shapes, sort_keys=True) + "\n")

    def save(self, directory: Path) -> None:
        self._write(self._state(), directory)

    def snapshot(self) -> Callable[[Path], None]:
        # One set of buffers, allocated once: a fresh allocation would page-fault on every
        # byte (about 10x the cost of the copy). The runner never takes a snapshot while the
        # writer of the previous one may still run, so the buffers are free here.
        if self._buffers is None:
            self._buffers = {name: np.empty_like(a) for name, a in self._state().items()}
        for name, array in self._state().items():
            np.copyto(self._buffers[name], array)
        copies = self._buffers
        return lambda directory: self._write(copies, directory)

    def restore(self, directory: Path) -> None:
        for name, array in self._state().items():
            saved = np.load(directory / f"{name}.npy", allow_pickle=False)
            if saved.shape != array.shape or saved.dtype != array.dtype:
                raise ValueError(
                    f"checkpoint array {name} is {saved.dtype}{list(saved.shape)}, this model "
                    f"needs {array.dtype}{list(array.shape)}"
                )
            array[...] = saved

    def export(self, directory: Path) -> str:
        np.savez(directory / MODEL_FILE, allow_pickle=False, **self.params)
        return MODEL_FILE

    def versions(self):
        return {"numpy": np.__version__}


if __name__ == "__main__":
    from trainer.runner import main

    sys.exit(main(NumpyWide))
