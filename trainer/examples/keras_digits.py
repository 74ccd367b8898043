"""Keras 3 (TensorFlow backend) example: a small MLP on the bundled 8x8 digits, custom train step.

Run: python -m trainer.examples.keras_digits --job-dir /tmp/job --train-steps 2000
Exact resume: op determinism on, seeded init, batches from (seed, step), and a
tf.train.Checkpoint of the model, the optimizer and the step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainer.data import batch_indices, load_digits
from trainer.hparams import HParam
from trainer.task import Task

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet TF's C++ info logs
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
MODEL_FILE = "model.keras"

# Module level, and nothing above imports TensorFlow or the runner: `invoke train` imports this
# module to check --hparam values before a VM exists. The bounds keep a run meaningful: Adam
# diverges long before a learning rate of 1, and a batch cannot exceed the 1797 digits.
HPARAMS = {
    "learning_rate": HParam(float, 1e-3, "Adam learning rate", minimum=1e-7, maximum=1.0),
    "batch_size": HParam(int, 64, "examples per step", minimum=1, maximum=1024),
    "hidden_units": HParam(int, 128, "units in each hidden layer", minimum=1, maximum=4096),
    "threads": HParam(int, 2, "TensorFlow intra-op threads", minimum=1, maximum=256),
}


class KerasDigits(Task):
    """A 2-hidden-layer MLP on scikit-learn's digits, Adam, one mini-batch per step."""

    framework = "keras"
    hparams = HPARAMS
    default_train_steps = 20000
    default_checkpoint_steps = 5000  # ≤2% overhead on 2 CPU cores: bench/checkpoint_overhead.py

    def __init__(self, hparams, seed, data_dir):
        super().__init__(hparams, seed, data_dir)
        import keras
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(hparams["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(seed)
        x, y = load_digits(data_dir)
        self.n_examples = len(y)
        self.x, self.y = tf.constant(x), tf.constant(y)
        units = hparams["hidden_units"]
        self.model = keras.Sequential(
            [
                keras.Input(shape=(x.shape[1],)),
                keras.layers.Dense(units, activation="relu"),
                keras.layers.Dense(units, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        self.optimizer = keras.optimizers.Adam(hparams["learning_rate"])
        self.optimizer.build(self.model.trainable_variables)  # so restore finds every slot
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)

        @tf.function(reduce_retracing=True)
        def step_fn(idx):
            xb, yb = tf.gather(self.x, idx), tf.gather(self.y, idx)
            with tf.GradientTape() as tape:
                loss = self.loss_fn(yb, self.model(xb, training=True))
            grads = tape.gradient(loss, self.model.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
            return loss

        self.step_fn = step_fn

    def train_step(self, step):
        idx = batch_indices(self.n_examples, self.hp["batch_size"], self.seed, step)
        return {"loss": float(self.step_fn(idx))}

    def save(self, directory: Path) -> None:
        self.checkpoint.write(str(directory / "state"))

    def restore(self, directory: Path) -> None:
        self.checkpoint.read(str(directory / "state")).assert_existing_objects_matched()

    def export(self, directory: Path) -> str:
        self.model.save(directory / MODEL_FILE)
        return MODEL_FILE

    def versions(self):
        import keras
        import tensorflow as tf

        return {"tensorflow": tf.__version__, "keras": keras.__version__}


if __name__ == "__main__":
    from trainer.runner import main

    sys.exit(main(KerasDigits))
