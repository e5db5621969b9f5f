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
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from aekit import __version__, runs
from aekit.data import DataSplits, check_divisible, dataset_identity, load_data, make_dataset
from aekit.distribute import Placement, make_placement
from aekit.errors import AekitError
from aekit.metrics import mse_per_image, psnr_from_mse
from aekit.plots import reconstruction_grid

EVAL_BATCH = 512
GRID_IMAGES = 10
# Recipe fields added after runs were already being recorded, with the value those runs trained with.
RECIPE_BEFORE_FIELD = {"warmup_steps": 0, "adam_beta_2": 0.999}


@dataclass
class TrainConfig:
    """The recipe. Its defaults are aekit's default recipe (see README, benchmarks/).

    `batch_size` is the GLOBAL batch, split evenly over replicas. The learning
    rate is the peak of the schedule: a linear warm-up from a tenth of it over
    `warmup_steps` (at most a quarter of the run), then a cosine decay to 1% by
    the last step of the requested epochs, so a short run anneals as well as a
    long one. It was tuned for batch 64: the warm-up lets it start at 5e-3, which
    learns faster than 2e-3 both in an 8-epoch demo and over 25 epochs (README,
    benchmarks/). When you change the batch by a factor k, scaling the learning
    rate by about k (linear scaling rule) keeps the per-sample step the same, up
    to the point where training turns unstable (about 1e-2 here).

    Adam's beta_2 is 0.99 rather than Keras' 0.999: the second-moment average then
    forgets the large gradients of the first steps within ~100 steps instead of
    ~1,000, which measurably helps runs of a few thousand steps (README).

    BatchNorm momentum is 0.9 rather than Keras' 0.99: with a few hundred steps
    per epoch the 0.99 moving statistics lag the weights, and validation (which
    uses them) reads far worse than training for the first epochs.
    See benchmarks/train_vs_reference.py for how the recipe compares.
    """

    dataset: str | None = None
    val_split: float = 0.1
    epochs: int = 25
    batch_size: int = 64
    learning_rate: float = 5e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 150
    adam_beta_2: float = 0.99
    filters: tuple[int, ...] = (32, 64)
    latent_dim: int = 16
    bn_momentum: float = 0.9
    gpus: int | None = None
    cpu_replicas: int = 0
    precision: str = "auto"
    seed: int = 0
    data_dir: str | None = None
    checkpoint_steps: int = 0  # also checkpoint every N steps within an epoch (0: at epoch ends only)

    # Settings that define the model or the data; a resumed run must keep them.
    FIXED_ON_RESUME = ("dataset", "val_split", "filters", "latent_dim", "bn_momentum", "seed", "lr_schedule", "precision")

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
        if not 0.0 <= self.bn_momentum < 1.0:
            raise AekitError(f"--bn-momentum must be in [0, 1), got {self.bn_momentum}. Try 0.9 or 0.99.")
        if not 0 <= self.seed < 2**32:
            raise AekitError(f"--seed must be between 0 and 2**32 - 1, got {self.seed}.")
        if self.warmup_steps < 0:
            raise AekitError(f"--warmup-steps must be 0 (no warm-up) or more, got {self.warmup_steps}.")
        if self.checkpoint_steps < 0:
            raise AekitError(f"--checkpoint-steps must be 0 (epoch ends only) or more, got {self.checkpoint_steps}.")

    def to_json(self) -> dict:
        data = asdict(self)
        data["filters"] = list(self.filters)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values = {**RECIPE_BEFORE_FIELD, **values}  # a run recorded before a field existed keeps its old value
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
    placement: dict = field(default_factory=dict)


def prepare_resume(run_dir: Path, requested: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The config to continue `run_dir` with: the stored recipe, with `epochs` and device options from the request.

    Raises AekitError if an explicitly requested setting in FIXED_ON_RESUME
    differs from the stored one, since the checkpoint would not match it.
    """
    record = runs.read_json(run_dir / runs.CONFIG)
    stored = TrainConfig.from_json(record.get("recipe", {}))
    # The data actually used (an absolute path, a TFDS name, or the bundled sample), so a
    # resume from another folder, or online after an offline fallback, trains on the same images.
    if record.get("data"):
        stored.dataset = dataset_identity(record["data"])
    if "dataset" in explicit and requested.dataset is not None:
        path = Path(requested.dataset).expanduser()
        requested.dataset = str(path.resolve()) if path.exists() else requested.dataset
    for name in TrainConfig.FIXED_ON_RESUME:
        if name in explicit and getattr(requested, name) != getattr(stored, name):
            raise AekitError(
                f"{run_dir} was trained with {name}={getattr(stored, name)!r}, not {getattr(requested, name)!r}; "
                "a resumed run keeps its model and data. Drop that option, or train into a new --output folder."
            )
    resumed = TrainConfig(**{**asdict(stored)})
    for name in ("epochs", "gpus", "cpu_replicas", "batch_size", "learning_rate", "warmup_steps", "data_dir", "checkpoint_steps"):
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

    if run_dir.exists() and not run_dir.is_dir():
        raise AekitError(f"--output {run_dir} is a file, not a folder. Pick a folder name for the run.")
    placement = make_placement(config.gpus, config.cpu_replicas, config.precision)
    splits = load_data(config.dataset, config.val_split, config.data_dir)
    check_divisible(splits.image_shape, len(config.filters))
    steps_per_epoch = _check_batch(config, placement, len(splits.train))
    keras.utils.set_random_seed(config.seed)

    strategy = placement.strategy
    with strategy.scope():
        from aekit.model import build_autoencoder

        encoder, decoder, autoencoder = build_autoencoder(
            splits.image_shape, config.filters, config.latent_dim, bn_momentum=config.bn_momentum,
            synchronized_bn=placement.num_replicas > 1,
        )
        optimizer = keras.optimizers.Adam(learning_rate=_schedule(config, steps_per_epoch), beta_2=config.adam_beta_2)
        if placement.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(autoencoder.trainable_variables)
    # Where training stands, saved with the model and optimizer: finished epochs, steps into
    # the current one, and that epoch's running loss and time, so a resumed epoch reads as one.
    progress = _Progress()
    checkpoint = tf.train.Checkpoint(model=autoencoder, optimizer=optimizer, **progress.variables)
    ckpt_dir = run_dir / runs.CHECKPOINTS
    # Under MultiWorkerMirroredStrategy every worker saves (saving is collective); only the
    # chief's copy, in the run folder, is kept and restored from.
    save_dir = ckpt_dir if placement.is_chief else Path(tempfile.mkdtemp(prefix="aekit-worker-ckpt-"))
    manager = tf.train.CheckpointManager(checkpoint, str(save_dir), max_to_keep=2)

    history = []
    latest = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise AekitError(
                f"The checkpoint in {ckpt_dir} does not fit this model or optimizer ({str(exc).splitlines()[0][:160]}). "
                "Resume with the run's own settings (precision, devices), or train into a new --output folder."
            ) from None
        if (run_dir / runs.HISTORY_JSON).is_file():
            history = runs.read_json(run_dir / runs.HISTORY_JSON)[: progress.epochs_done]
    start_epoch, start_step = progress.epochs_done, progress.steps_done
    if start_step and runs.is_run_dir(run_dir):
        stored_steps = runs.read_json(run_dir / runs.CONFIG).get("steps_per_epoch")
        if stored_steps != steps_per_epoch:  # another batch size: the saved position means other batches
            progress.start_epoch()
            start_step = 0
    if start_epoch >= config.epochs and (runs.is_finished(run_dir) or not history):
        raise AekitError(
            f"{run_dir} already finished {start_epoch} epoch(s). Pass --epochs larger than {start_epoch} "
            "to train further, or --output a new folder."
        )

    if placement.is_chief:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AekitError(f"Cannot create the run folder {run_dir}: {exc.strerror}. Pass --output a writable folder.") from None
        runs.write_json(run_dir / runs.CONFIG, _config_record(config, splits, placement, steps_per_epoch))
        (run_dir / runs.METRICS).unlink(missing_ok=True)  # unfinished again until this run ends
        runs.remove_partials(run_dir)  # what a killed run was writing when it died

    def dataset_fn(context):
        per_pipeline = placement.num_replicas // context.num_input_pipelines  # replicas fed by this worker
        return make_dataset(
            splits.train, splits.scaling, context.get_per_replica_batch_size(config.batch_size),
            steps_per_epoch * per_pipeline, seed=config.seed, start_epoch=start_epoch,
            skip_batches=start_step * per_pipeline, num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
        )

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = _make_train_step(strategy, autoencoder, optimizer, config.batch_size, placement.precision)
    val_images = splits.scaling.to_model_numpy(splits.val)
    grid_images = val_images[:GRID_IMAGES]  # the same digits in reconstructions.png and TensorBoard
    predict = tf.function(lambda x: autoencoder(x, training=False))

    callback.on_train_begin(
        {
            "run_dir": str(run_dir),
            "start_epoch": start_epoch,
            "start_step": start_step,
            "epochs": config.epochs,
            "steps_per_epoch": steps_per_epoch,
            "global_batch_size": config.batch_size,
            "data": splits.describe(),
            "placement": placement.describe(),
            "is_chief": placement.is_chief,
            "params": int(autoencoder.count_params()),
        }
    )
    if placement.kind == "multi_worker":
        _check_workers_agree(strategy, [len(splits.train), steps_per_epoch, start_epoch, start_step])
    epoch, step = start_epoch + 1, start_step
    tensorboard = TensorBoardLog(run_dir / runs.TENSORBOARD, enabled=placement.is_chief)
    stop = _StopRequest()  # Ctrl-C stops at the next step boundary, so the checkpoint is exact
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            callback.on_epoch_begin(epoch, steps_per_epoch)
            first = start_step + 1 if epoch == start_epoch + 1 else 1
            if first == 1:
                progress.start_epoch()
            earlier, started = progress.seconds, time.perf_counter()  # earlier: time spent before a resume
            for step in range(first, steps_per_epoch + 1):
                loss = float(train_step(iterator))
                if not math.isfinite(loss):
                    raise AekitError(
                        f"Training diverged: loss is {loss} at epoch {epoch}, step {step}. "
                        "Lower --learning-rate (or use --precision float32) and train into a new folder."
                    )
                elapsed = time.perf_counter() - started
                progress.step_done(step, loss, earlier + elapsed)
                callback.on_step_end(epoch, step, loss, (step - first + 1) * config.batch_size / max(elapsed, 1e-9))
                if config.checkpoint_steps and step % config.checkpoint_steps == 0 and step < steps_per_epoch:
                    manager.save()
                stop.check()
            seconds = earlier + time.perf_counter() - started
            val_mse, val_psnr = _evaluate(predict, val_images)
            row = {
                "epoch": epoch,
                "train_loss": progress.loss_sum / steps_per_epoch,
                "val_mse": val_mse,
                "val_psnr": val_psnr,
                "seconds": seconds,
                "samples_per_sec": steps_per_epoch * config.batch_size / seconds,
                "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            }
            history.append(row)
            if placement.is_chief:  # history first: a kill before the save just repeats this epoch
                runs.write_history(run_dir, history)
                tensorboard.write_epoch(row, reconstruction_grid(grid_images, _predict_numpy(predict, grid_images)))
            progress.epoch_done(epoch)
            manager.save()
            callback.on_epoch_end(epoch, row)
    except KeyboardInterrupt:
        if placement.kind != "multi_worker":  # a lone worker cannot run the collective save
            manager.save()
        raise TrainingInterrupted(run_dir, progress.epochs_done, progress.steps_done) from None
    except tf.errors.OpError as exc:
        if placement.kind != "multi_worker":
            raise
        raise AekitError(
            f"Lost contact with another worker at epoch {epoch}, step {step} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}). Restart every worker with the same command; training resumes "
            f"from the last checkpoint in {ckpt_dir}."
        ) from None

    finally:
        stop.restore()
        tensorboard.close()
        if not placement.is_chief:
            shutil.rmtree(save_dir, ignore_errors=True)

    metrics = _final_metrics(history, autoencoder, encoder, decoder)
    if placement.is_chief:
        _write_outputs(run_dir, history, encoder, decoder, autoencoder, predict, grid_images)
        runs.write_json(run_dir / runs.METRICS, metrics)
    result = TrainResult(run_dir, metrics, history, wrote_files=placement.is_chief, placement=placement.describe())
    callback.on_train_end(result)
    return result


class TensorBoardLog:
    """Per-epoch TensorBoard summaries in <run>/tensorboard/, laid out as Keras' TensorBoard callback lays them.

    `train/` gets epoch_loss, epoch_learning_rate and epoch_samples_per_sec; `validation/` gets
    epoch_loss (the validation MSE, drawn in the same chart as the training loss), epoch_psnr and
    the image `reconstructions` (originals above reconstructions). The step is the epoch number,
    so a resumed run appends epochs N+1, ... in a new event file that TensorBoard reads with the
    earlier ones. An epoch written and then lost to a kill before its checkpoint is trained and
    written again on resume: it shows twice at the same step. Only the chief writes; elsewhere
    (`enabled=False`) every method does nothing.

    `tf.summary.scalar`/`image` live in the tensorboard package, which TensorFlow 2.20+ no longer
    installs; `tf.summary.write` with the scalars/images plugin metadata writes the same records,
    so training never needs tensorboard (viewing does: `pip install tensorboard`).

    Example:
        >>> log = TensorBoardLog(run_dir / runs.TENSORBOARD)
        >>> log.write_epoch(row, reconstruction_grid(originals, reconstructions)); log.close()
    """

    TRAIN, VALIDATION = "train", "validation"

    def __init__(self, folder: Path, enabled: bool = True):
        import tensorflow as tf

        self.writers = {}
        if enabled:  # event files are append-only streams: no atomic rename, and a torn tail is skipped
            self.writers = {part: tf.summary.create_file_writer(str(folder / part)) for part in (self.TRAIN, self.VALIDATION)}

    def write_epoch(self, row: dict, grid: np.ndarray) -> None:
        """Writes one history row (see runs.HISTORY_FIELDS) and a (H, W, C) grid in [0, 1] at step row['epoch']."""
        if not self.writers:
            return
        step = row["epoch"]
        self._scalars(self.TRAIN, step, epoch_loss=row["train_loss"], epoch_learning_rate=row["learning_rate"],
                      epoch_samples_per_sec=row["samples_per_sec"])
        self._scalars(self.VALIDATION, step, epoch_loss=row["val_mse"], epoch_psnr=row["val_psnr"])
        self._image(self.VALIDATION, step, "reconstructions", grid)
        for writer in self.writers.values():
            writer.flush()  # on disk before the epoch's checkpoint, visible to a running TensorBoard

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}

    def _scalars(self, part: str, step: int, **values: float) -> None:
        import tensorflow as tf

        with self.writers[part].as_default():
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_plugin_metadata("scalars"))

    def _image(self, part: str, step: int, tag: str, image: np.ndarray) -> None:
        import tensorflow as tf

        # The images plugin's record: [width, height, PNG bytes...] as strings.
        png = tf.io.encode_png(tf.image.convert_image_dtype(image, tf.uint8, saturate=True))
        record = tf.stack([tf.as_string(image.shape[1]), tf.as_string(image.shape[0]), png])
        with self.writers[part].as_default():
            tf.summary.write(tag, record, step=step, metadata=_plugin_metadata("images"))


def _plugin_metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2

    data_class = {"scalars": summary_pb2.DATA_CLASS_SCALAR, "images": summary_pb2.DATA_CLASS_BLOB_SEQUENCE}[plugin]
    plugin_data = summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
    return summary_pb2.SummaryMetadata(plugin_data=plugin_data, data_class=data_class)


class _StopRequest:
    """Turns Ctrl-C into KeyboardInterrupt at the next step boundary instead of mid-step."""

    def __init__(self):
        import signal
        import threading

        self.requested = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._request)

    def _request(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            import signal

            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def _check_workers_agree(strategy, facts: list[int]) -> None:
    """Stops with a clear error unless every worker has the same data size, steps and resume point."""
    import tensorflow as tf

    names = ("training images", "steps per epoch", "finished epochs", "steps into the epoch")
    local = tf.constant(facts, tf.float64)
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(lambda: tf.identity(local)), axis=None)
    mean_sq = strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(lambda: tf.square(local)), axis=None)
    spread = (mean_sq - tf.square(mean)).numpy()
    differ = [f"{name} (here {value})" for name, value, var in zip(names, facts, spread) if var > 1e-6]
    if differ:
        raise AekitError(
            f"The workers disagree on {', '.join(differ)}. Give every worker the same --dataset (e.g. shared "
            "storage or --data-dir) and the same run folder on shared storage, then restart them all."
        )


class TrainingInterrupted(Exception):
    """Ctrl-C during training: the state was saved (single process) and the run can resume."""

    def __init__(self, run_dir: Path, epochs_done: int, steps_done: int):
        self.run_dir, self.epochs_done, self.steps_done = run_dir, epochs_done, steps_done
        super().__init__(
            f"Interrupted after epoch {epochs_done}" + (f" and {steps_done} steps of the next" if steps_done else "")
            + f"; checkpoint saved. Resume with: aekit train --resume {run_dir}"
        )


class _Progress:
    """Checkpointed counters of where training stands."""

    def __init__(self):
        import tensorflow as tf

        def counter(name, dtype=tf.int64):
            return tf.Variable(0, dtype=dtype, trainable=False, name=name)

        self.variables = {
            "epochs_done": counter("epochs_done"),
            "steps_done": counter("steps_done"),
            "epoch_loss_sum": counter("epoch_loss_sum", tf.float64),
            "epoch_seconds": counter("epoch_seconds", tf.float64),
        }

    epochs_done = property(lambda self: int(self.variables["epochs_done"].numpy()))
    steps_done = property(lambda self: int(self.variables["steps_done"].numpy()))
    loss_sum = property(lambda self: float(self.variables["epoch_loss_sum"].numpy()))
    seconds = property(lambda self: float(self.variables["epoch_seconds"].numpy()))

    def start_epoch(self) -> None:
        for name in ("steps_done", "epoch_loss_sum", "epoch_seconds"):
            self.variables[name].assign(0)

    def step_done(self, step: int, loss: float, elapsed: float) -> None:
        self.variables["steps_done"].assign(step)
        self.variables["epoch_loss_sum"].assign_add(loss)
        self.variables["epoch_seconds"].assign(elapsed)

    def epoch_done(self, epoch: int) -> None:
        self.variables["epochs_done"].assign(epoch)
        self.variables["steps_done"].assign(0)


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
    # A linear warm-up from a tenth of the peak (at most a quarter of the run), then a cosine
    # decay to 1% of the peak by the last step of the run.
    total = config.epochs * steps_per_epoch
    warmup = min(config.warmup_steps, total // 4)
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10 if warmup else config.learning_rate, decay_steps=total - warmup, alpha=0.01,
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
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


def weights_digest(model) -> str:
    """sha256 of every weight of a model, in order: equal on all workers of a synchronous run."""
    import hashlib

    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _final_metrics(history: list[dict], autoencoder, encoder, decoder) -> dict:
    last = history[-1]
    return {
        "weights_sha256": weights_digest(autoencoder),
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


def _write_outputs(run_dir, history, encoder, decoder, autoencoder, predict, grid_images) -> None:
    from aekit.plots import plot_history, plot_reconstructions

    for name, model in (("encoder", encoder), ("decoder", decoder), ("autoencoder", autoencoder)):
        with runs.atomic_path(run_dir / runs.MODEL_FILES[name]) as tmp:
            model.save(tmp)
    runs.write_history(run_dir, history)
    plot_history(history, run_dir / runs.LOSS_PLOT)
    plot_reconstructions(grid_images, _predict_numpy(predict, grid_images), run_dir / runs.RECONSTRUCTIONS)


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
