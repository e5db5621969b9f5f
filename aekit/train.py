"""Training: one custom loop that serves every tf.distribute strategy.

`strategy.run` executes a `tf.function` step on every replica and
`strategy.reduce` sums the per-replica losses. The same loop runs on one CPU,
mirrored over GPUs or logical CPUs, and under MultiWorkerMirroredStrategy, where
Keras 3's `fit` breaks (keras-team/keras#20585). The data stream is endless and
every epoch runs a fixed number of steps, so all workers finish together.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from aekit import __version__, runs
from aekit.data import DataSplits, check_divisible, load_data, make_dataset
from aekit.distribute import Placement, make_placement
from aekit.errors import AekitError
from aekit.metrics import mse_per_image, psnr_from_mse

EVAL_BATCH = 512
GRID_IMAGES = 10


@dataclass
class TrainConfig:
    """The recipe. Its defaults are aekit's default recipe (see README, benchmarks/).

    `batch_size` is the GLOBAL batch, split evenly over replicas. The learning
    rate is the peak of a cosine decay over the whole run; it was tuned for
    batch 64. When you change the batch by a factor k, scaling the learning rate
    by about k (linear scaling rule) keeps the per-sample step the same, up to the
    point where training turns unstable (about 1e-2 here).

    BatchNorm momentum is 0.9 rather than Keras' 0.99: with a few hundred steps
    per epoch the 0.99 moving statistics lag the weights, and validation (which
    uses them) reads far worse than training for the first epochs.
    See benchmarks/train_vs_reference.py for how the recipe compares.
    """

    dataset: str | None = None
    val_split: float = 0.1
    epochs: int = 25
    batch_size: int = 64
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"
    filters: tuple[int, ...] = (32, 64)
    latent_dim: int = 16
    bn_momentum: float = 0.9
    gpus: int | None = None
    cpu_replicas: int = 0
    precision: str = "auto"
    seed: int = 0
    data_dir: str | None = None

    # Settings that define the model or the data; a resumed run must keep them.
    FIXED_ON_RESUME = ("dataset", "val_split", "filters", "latent_dim", "bn_momentum", "seed", "lr_schedule")

    def validate(self) -> None:
        if self.epochs < 1:
            raise AekitError(f"--epochs must be at least 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise AekitError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not self.learning_rate > 0:
            raise AekitError(f"--learning-rate must be positive, got {self.learning_rate}.")
        if self.lr_schedule not in ("cosine", "constant"):
            raise AekitError(f"--lr-schedule must be cosine or constant, got {self.lr_schedule!r}.")
        if not self.filters or min(self.filters) < 1:
            raise AekitError(f"--filters must be positive integers such as 32,64, got {self.filters}.")
        if self.latent_dim < 1:
            raise AekitError(f"--latent-dim must be at least 1, got {self.latent_dim}.")

    def to_json(self) -> dict:
        data = asdict(self)
        data["filters"] = list(self.filters)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "filters" in values:
            values["filters"] = tuple(values["filters"])
        return cls(**values)


class TrainCallback:
    """What the training loop reports; the CLI renders it. All methods are optional."""

    def on_train_begin(self, info: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, steps: int) -> None: ...

    def on_step_end(self, epoch: int, step: int, loss: float, samples_per_sec: float) -> None: ...

    def on_epoch_end(self, epoch: int, row: dict) -> None: ...

    def on_train_end(self, result: "TrainResult") -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    wrote_files: bool = True


def prepare_resume(run_dir: Path, requested: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The config to continue `run_dir` with: the stored recipe, with `epochs` and device options from the request.

    Raises AekitError if an explicitly requested setting in FIXED_ON_RESUME
    differs from the stored one, since the checkpoint would not match it.
    """
    stored = TrainConfig.from_json(runs.read_json(run_dir / runs.CONFIG).get("recipe", {}))
    for name in TrainConfig.FIXED_ON_RESUME:
        if name in explicit and getattr(requested, name) != getattr(stored, name):
            raise AekitError(
                f"{run_dir} was trained with {name}={getattr(stored, name)!r}, not {getattr(requested, name)!r}; "
                "a resumed run keeps its model and data. Drop that option, or train into a new --output folder."
            )
    resumed = TrainConfig(**{**asdict(stored)})
    for name in ("epochs", "gpus", "cpu_replicas", "precision", "batch_size", "learning_rate", "data_dir"):
        if name in explicit:
            setattr(resumed, name, getattr(requested, name))
    return resumed


def train(config: TrainConfig, run_dir: Path, callback: TrainCallback | None = None) -> TrainResult:
    """Trains (or resumes) the autoencoder into `run_dir` and writes the run folder.

    If `run_dir` already holds a checkpoint, training continues from the last
    finished epoch and the history reads as one run.

    Args:
        config: the recipe; validated here.
        run_dir: the run folder (created when the input has been checked).
        callback: receives progress events.

    Returns:
        TrainResult with the final metrics (also written to metrics.json).
    """
    import keras
    import tensorflow as tf

    callback = callback or TrainCallback()
    config.validate()
    run_dir = Path(run_dir)

    placement = make_placement(config.gpus, config.cpu_replicas, config.precision)
    splits = load_data(config.dataset, config.val_split, config.data_dir)
    check_divisible(splits.image_shape, len(config.filters))
    steps_per_epoch = _check_batch(config, placement, len(splits.train))
    keras.utils.set_random_seed(config.seed)

    strategy = placement.strategy
    with strategy.scope():
        from aekit.model import build_autoencoder

        encoder, decoder, autoencoder = build_autoencoder(
            splits.image_shape, config.filters, config.latent_dim, bn_momentum=config.bn_momentum
        )
        optimizer = keras.optimizers.Adam(learning_rate=_schedule(config, steps_per_epoch))
        if placement.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(autoencoder.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
    checkpoint = tf.train.Checkpoint(model=autoencoder, optimizer=optimizer, epochs_done=epoch_var)
    # Under MultiWorkerMirroredStrategy every worker must save (the save is collective); only the chief's copy is kept.
    ckpt_dir = run_dir / runs.CHECKPOINTS if placement.is_chief else Path(tempfile.mkdtemp(prefix="aekit-worker-ckpt-"))
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=2)

    start_epoch, history = 0, []
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        start_epoch = int(epoch_var.numpy())
        if (run_dir / runs.HISTORY_JSON).is_file():
            history = runs.read_json(run_dir / runs.HISTORY_JSON)[:start_epoch]
    if start_epoch >= config.epochs:
        raise AekitError(
            f"{run_dir} already finished {start_epoch} epoch(s). Pass --epochs larger than {start_epoch} "
            "to train further, or --output a new folder."
        )

    if placement.is_chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_json(run_dir / runs.CONFIG, _config_record(config, splits, placement, steps_per_epoch))
        (run_dir / runs.METRICS).unlink(missing_ok=True)  # unfinished again until this run ends

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = make_dataset(
        splits.train, splits.scaling, config.batch_size, seed=config.seed + start_epoch, options=options
    )
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    train_step = _make_train_step(strategy, autoencoder, optimizer, config.batch_size, placement.precision)
    val_images = splits.scaling.to_model_numpy(splits.val)
    predict = tf.function(lambda x: autoencoder(x, training=False))

    callback.on_train_begin(
        {
            "run_dir": str(run_dir),
            "start_epoch": start_epoch,
            "epochs": config.epochs,
            "steps_per_epoch": steps_per_epoch,
            "global_batch_size": config.batch_size,
            "data": splits.describe(),
            "placement": placement.describe(),
            "params": int(autoencoder.count_params()),
        }
    )
    for epoch in range(start_epoch + 1, config.epochs + 1):
        callback.on_epoch_begin(epoch, steps_per_epoch)
        started, loss_sum = time.perf_counter(), 0.0
        for step in range(1, steps_per_epoch + 1):
            loss = float(train_step(iterator))
            if not math.isfinite(loss):
                raise AekitError(
                    f"Training diverged: loss is {loss} at epoch {epoch}, step {step}. "
                    "Lower --learning-rate (or use --precision float32) and train into a new folder."
                )
            loss_sum += loss
            elapsed = time.perf_counter() - started
            callback.on_step_end(epoch, step, loss, step * config.batch_size / max(elapsed, 1e-9))
        seconds = time.perf_counter() - started
        val_mse, val_psnr = _evaluate(predict, val_images)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / steps_per_epoch,
            "val_mse": val_mse,
            "val_psnr": val_psnr,
            "seconds": seconds,
            "samples_per_sec": steps_per_epoch * config.batch_size / seconds,
            "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
        }
        history.append(row)
        epoch_var.assign(epoch)
        manager.save(checkpoint_number=epoch)
        if placement.is_chief:
            runs.write_history(run_dir, history)
        callback.on_epoch_end(epoch, row)

    metrics = _final_metrics(history, autoencoder, encoder, decoder)
    if placement.is_chief:
        _write_outputs(run_dir, history, encoder, decoder, autoencoder, predict, val_images)
        runs.write_json(run_dir / runs.METRICS, metrics)
    result = TrainResult(run_dir, metrics, history, wrote_files=placement.is_chief)
    callback.on_train_end(result)
    return result


def _check_batch(config: TrainConfig, placement: Placement, n_train: int) -> int:
    replicas = placement.num_replicas
    if config.batch_size % replicas:
        lower = config.batch_size // replicas * replicas or replicas
        raise AekitError(
            f"--batch-size {config.batch_size} does not divide across {replicas} replicas. "
            f"Use a multiple of {replicas}, e.g. --batch-size {lower}."
        )
    if config.batch_size > n_train:
        raise AekitError(
            f"--batch-size {config.batch_size} is larger than the {n_train} training images. "
            f"Use --batch-size {max(replicas, n_train // 4 // replicas * replicas)} or fewer, or add data."
        )
    return n_train // config.batch_size


def _schedule(config: TrainConfig, steps_per_epoch: int):
    import keras

    if config.lr_schedule == "constant":
        return config.learning_rate
    # Decay to 1% of the peak by the last step of the run.
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * steps_per_epoch, alpha=0.01
    )


def _make_train_step(strategy, model, optimizer, global_batch_size: int, precision: str):
    import tensorflow as tf

    scaled = precision == "mixed_float16"

    def replica_step(images):
        with tf.GradientTape() as tape:
            reconstructions = tf.cast(model(images, training=True), tf.float32)
            per_image = tf.reduce_mean(tf.square(images - reconstructions), axis=[1, 2, 3])
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)
            # Keras BatchNorm keeps no regularisation losses here; model.losses is empty.
            to_differentiate = optimizer.scale_loss(loss) if scaled else loss
        grads = tape.gradient(to_differentiate, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


def _predict_numpy(predict, images: np.ndarray) -> np.ndarray:
    out = [np.asarray(predict(images[i : i + EVAL_BATCH]), np.float32) for i in range(0, len(images), EVAL_BATCH)]
    return np.concatenate(out)


def _evaluate(predict, val_images: np.ndarray) -> tuple[float, float]:
    per_image = mse_per_image(val_images, _predict_numpy(predict, val_images))
    return float(per_image.mean()), float(psnr_from_mse(per_image).mean())


def _final_metrics(history: list[dict], autoencoder, encoder, decoder) -> dict:
    last = history[-1]
    return {
        "epochs": last["epoch"],
        "final_train_loss": last["train_loss"],
        "final_val_mse": last["val_mse"],
        "final_val_psnr": last["val_psnr"],
        "best_val_mse": min(row["val_mse"] for row in history),
        "mean_samples_per_sec": float(np.mean([row["samples_per_sec"] for row in history])),
        "train_seconds": float(sum(row["seconds"] for row in history)),
        "params": {
            "encoder": int(encoder.count_params()),
            "decoder": int(decoder.count_params()),
            "autoencoder": int(autoencoder.count_params()),
        },
    }


def _write_outputs(run_dir, history, encoder, decoder, autoencoder, predict, val_images) -> None:
    from aekit.plots import plot_history, plot_reconstructions

    for name, model in (("encoder", encoder), ("decoder", decoder), ("autoencoder", autoencoder)):
        with runs.atomic_path(run_dir / runs.MODEL_FILES[name]) as tmp:
            model.save(tmp)
    runs.write_history(run_dir, history)
    plot_history(history, run_dir / runs.LOSS_PLOT)
    grid = val_images[:GRID_IMAGES]
    plot_reconstructions(grid, _predict_numpy(predict, grid), run_dir / runs.RECONSTRUCTIONS)


def _config_record(config: TrainConfig, splits: DataSplits, placement: Placement, steps_per_epoch: int) -> dict:
    import keras
    import tensorflow as tf

    return {
        "aekit_version": __version__,
        "recipe": config.to_json(),
        "model": {
            "input_shape": list(splits.image_shape),
            "filters": list(config.filters),
            "latent_dim": config.latent_dim,
        },
        "data": splits.describe(),
        "placement": placement.describe(),
        "steps_per_epoch": steps_per_epoch,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "pid": os.getpid(),
    }
