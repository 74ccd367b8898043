"""scikit-learn example: an SGDClassifier trained with partial_fit on the bundled 8x8 digits.

Run: python -m trainer.examples.sklearn_digits --job-dir /tmp/job --train-steps 300
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from trainer.data import batch_indices, load_digits
from trainer.hparams import HParam
from trainer.task import Task

MODEL_FILE = "model.skops"
# What we accept when loading a skops file from the job dir (never pickle from a bucket).
TRUSTED_TYPES = ["sklearn.linear_model._stochastic_gradient.SGDClassifier"]

# Module level, and nothing above imports scikit-learn or the runner: `invoke train` imports this
# module to check --hparam values before a VM exists. A constant SGD step above 10 only diverges,
# and a batch cannot exceed the 1797 digits.
HPARAMS = {
    "learning_rate": HParam(
        float, 0.01, "constant SGD step size (eta0)", minimum=1e-7, maximum=10.0
    ),
    "alpha": HParam(float, 1e-4, "L2 regularisation strength", minimum=0.0, maximum=10.0),
    "batch_size": HParam(int, 32, "examples per step", minimum=1, maximum=1024),
}


class SklearnDigits(Task):
    """Logistic regression by SGD on scikit-learn's digits, one mini-batch per step."""

    framework = "sklearn"
    hparams = HPARAMS
    default_train_steps = 1000
    default_checkpoint_steps = 200

    def __init__(self, hparams, seed, data_dir):
        super().__init__(hparams, seed, data_dir)
        from sklearn.linear_model import SGDClassifier

        self.x, self.y = load_digits(data_dir)
        self.classes = np.unique(self.y)
        self.model = SGDClassifier(
            loss="log_loss",
            learning_rate="constant",
            eta0=hparams["learning_rate"],
            alpha=hparams["alpha"],
            shuffle=False,
            random_state=seed,
        )

    def train_step(self, step):
        idx = batch_indices(len(self.y), self.hp["batch_size"], self.seed, step)
        self.model.partial_fit(self.x[idx], self.y[idx], classes=self.classes)
        proba = self.model.predict_proba(self.x[idx])
        loss = -np.mean(
            np.log(proba[np.arange(len(idx)), np.searchsorted(self.classes, self.y[idx])] + 1e-12)
        )
        return {"loss": float(loss)}

    def save(self, directory: Path) -> None:
        import skops.io

        skops.io.dump(self.model, directory / MODEL_FILE)

    def restore(self, directory: Path) -> None:
        import skops.io

        self.model = skops.io.load(directory / MODEL_FILE, trusted=TRUSTED_TYPES)

    def export(self, directory: Path) -> str:
        self.save(directory)
        return MODEL_FILE

    def versions(self):
        import sklearn
        import skops

        return {"scikit-learn": sklearn.__version__, "skops": skops.__version__}


if __name__ == "__main__":
    from trainer.runner import main

    sys.exit(main(SklearnDigits))
