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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aekit import __version__, runs
from aekit.data import (
    DataSplits,
    DeviceImages,
    PackedSplits,
    StreamedImages,
    check_divisible,
    check_same_data,
    inference_batch,
    load_data,
)
from aekit.distribute import Placement, make_placement
from aekit.errors import AekitError
from aekit.lazy import keras, summary_pb2, tf
from aekit.metrics import mse_per_image, psnr_from_mse
from aekit.plots import reconstruction_grid
from aekit.recipe import TrainConfig, prepare_resume, read_config  # noqa: F401  (prepare_resume: aekit.train's public name)

GRID_IMAGES = 10


class TrainCallback:
    """What the training loop reports; the CLI renders it. All methods are optional."""

    def on_train_begin(self, info: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, steps: int) -> None: ...

    def on_step_end(self, epoch: int, step: int, loss: float, samples_per_sec: float) -> None: ...

    def on_epoch_end(self, epoch: int, row: dict) -> None: ...

    def on_train_end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    wrote_files: bool = True
    placement: dict = field(default_factory=dict)


def train(config: TrainConfig, run_dir: Path, callback: TrainCallback | None = None) -> TrainResult:
    """Trains (or resumes) the autoencoder into `run_dir` and writes the run folder.

    If `run_dir` already holds a checkpoint, training continues from the last
    finished step and the history reads as one run. The folder is locked while
    training (a second process on it fails at once).

    Args:
        config: the recipe; validated here, before anything is written.
        run_dir: the run folder (created when the input has been checked).
        callback: receives progress events.

    Returns:
        TrainResult with the final metrics (also written to metrics.json).
    """
    callback = callback or TrainCallback()
    config.validate()
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise AekitError(f"--output {run_dir} is a file, not a folder. Pick a folder name for the run.")
    placement = make_placement(config.gpus, config.cpu_replicas, config.precision, config.worker_timeout)
    config = config.resolve(gpus=placement.num_replicas if placement.on_gpu else 0)  # the batch, rate and warm-up used

    try:
        return _train(config, run_dir, callback, placement)
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise AekitError(
            f"Out of memory ({first}). The model or its batch does not fit: use smaller --filters, --latent-dim or "
            "--batch-size." + (f" The run folder {run_dir} keeps its last checkpoint." if runs.is_run_dir(run_dir) else "")
        ) from None


def _train(config: TrainConfig, run_dir: Path, callback: TrainCallback, placement: Placement) -> TrainResult:
    with _claim(run_dir, placement):
        splits, steps_per_epoch = _load_data(config, placement)
        if runs.is_run_dir(run_dir):  # a resume: a pack must still hold the shards the run trained on
            check_same_data(read_config(run_dir).get("data") or {}, splits, str(run_dir))
        model = _build_model(config, placement, splits.image_shape, steps_per_epoch)
        state = _Checkpoints(run_dir, model, placement)
        history, start_epoch, start_step = _restore(state, config, steps_per_epoch)
        plan = _plan_schedule(run_dir, config, model, steps_per_epoch, start_epoch, start_step)
        if placement.is_chief:
            _prepare_run_folder(run_dir, config, splits, placement, steps_per_epoch, plan)
        batches = _training_batches(config, placement, splits, steps_per_epoch, start_epoch, start_step)
        run = _Run(config, placement, run_dir, splits, steps_per_epoch, model, state, callback)
        history = _train_epochs(run, batches, history, start_epoch, start_step)
        return _finish(run, history)


@dataclass
class _Model:
    encoder: object
    decoder: object
    autoencoder: object
    optimizer: object


@dataclass
class _Run:
    """What the epochs need: settings, devices, data, model, checkpoints, who listens."""

    config: TrainConfig
    placement: Placement
    run_dir: Path
    splits: DataSplits
    steps_per_epoch: int
    model: _Model
    state: _Checkpoints
    callback: TrainCallback
    predict: object = None  # the compiled inference function, set when the loop starts
    steps_per_call: int = 1  # K: training steps per tf.function call
    grid_images: object = None  # the validation images drawn in reconstructions.png and TensorBoard


@contextmanager
def _claim(run_dir: Path, placement: Placement):
    """Locks the run folder (the chief only); a folder this call created is removed again if nothing was written."""
    if not placement.is_chief:  # other workers write nothing in the run folder
        yield
        return
    created = not run_dir.exists()
    lock = runs.RunLock(run_dir).acquire()
    try:
        yield
    except BaseException:
        if created and not runs.is_run_dir(run_dir):  # refused before config.json: leave no folder behind
            lock.release()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        lock.release()


def _load_data(config: TrainConfig, placement: Placement) -> tuple[DataSplits | PackedSplits, int]:
    splits = load_data(
        config.dataset,
        config.val_split,
        config.data_dir,
        seed=config.seed,
        val_from_end=config.val_from_end,
        pixel_max=config.pixel_max,
    )
    check_divisible(splits.image_shape, len(config.filters))
    steps_per_epoch = _check_batch(config, placement, splits.count("train"))
    if isinstance(splits, PackedSplits):  # each worker reads its own shards: they must feed it
        steps_per_epoch = splits.packed.steps_per_epoch(config.batch_size, placement.num_workers)
        config.val_split = splits.val_split  # a pack keeps the split it was packed with; config.json says so
    return splits, steps_per_epoch


def _training_batches(config, placement: Placement, splits, steps_per_epoch: int, start_epoch: int, start_step: int):
    """Where each step's images come from: the in-memory set on the devices, or the packed shards streamed."""
    if isinstance(splits, PackedSplits):
        return StreamedImages(
            splits.packed, placement.strategy, config.batch_size, steps_per_epoch, config.seed, start_epoch, start_step
        )
    return DeviceImages(splits.train, splits.scaling, placement.strategy, config.batch_size, config.seed, placement.on_gpu)


def _build_model(config: TrainConfig, placement: Placement, image_shape, steps_per_epoch: int) -> _Model:
    from aekit.kernels import FusedAdam
    from aekit.model import build_autoencoder

    keras.utils.set_random_seed(config.seed)
    with placement.strategy.scope():
        encoder, decoder, autoencoder = build_autoencoder(
            image_shape,
            config.filters,
            config.latent_dim,
            bn_momentum=config.bn_momentum,
            synchronized_bn=placement.num_replicas > 1,
            fused_bn=True,
        )
        optimizer = FusedAdam(learning_rate=_schedule(config), beta_2=config.adam_beta_2)
        if placement.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(autoencoder.trainable_variables)
    return _Model(encoder, decoder, autoencoder, optimizer)


class _Checkpoints:
    """The model, optimizer and where training stands, saved together under <run>/checkpoints."""

    def __init__(self, run_dir: Path, model: _Model, placement: Placement):
        self.run_dir, self.dir = run_dir, run_dir / runs.CHECKPOINTS
        # Finished epochs, steps into the current one, and that epoch's running loss and time.
        self.progress = _Progress()
        self.checkpoint = tf.train.Checkpoint(model=model.autoencoder, optimizer=model.optimizer, **self.progress.variables)
        # Under MultiWorkerMirroredStrategy every worker saves (saving is collective); only the
        # chief's copy, in the run folder, is kept and restored from.
        self.save_dir = self.dir if placement.is_chief else Path(tempfile.mkdtemp(prefix="aekit-worker-ckpt-"))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.save_dir), max_to_keep=2)
        self.is_chief = placement.is_chief

    def save(self) -> None:
        self.manager.save()

    def close(self) -> None:
        if not self.is_chief:
            shutil.rmtree(self.save_dir, ignore_errors=True)


def _restore(state: _Checkpoints, config: TrainConfig, steps_per_epoch: int) -> tuple[list[dict], int, int]:
    """(history so far, finished epochs, steps into the next) from the run's checkpoint; a new run starts at 0.

    A run that trained but whose checkpoint cannot be read is an error naming the file, and
    nothing in the folder is touched: starting again would overwrite the run.
    """

    run_dir, progress = state.run_dir, state.progress
    latest = tf.train.latest_checkpoint(str(state.dir)) if state.dir.is_dir() else None
    if latest is None:
        if _has_trained(run_dir):
            index = state.dir / "checkpoint"
            raise AekitError(
                f"{run_dir} has trained, but its checkpoint cannot be read ({index} is missing or corrupt), so it "
                "cannot resume; nothing was changed. Restore the checkpoint files, or train into a new --output folder."
            )
        return [], 0, 0
    try:
        state.checkpoint.restore(latest).assert_existing_objects_matched()
    except (IndexError, OSError, EOFError) as exc:  # a truncated or damaged data file
        raise AekitError(
            f"The checkpoint {latest} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
            "nothing was changed. Restore the checkpoint files, or train into a new --output folder."
        ) from None
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise AekitError(
            f"The checkpoint {latest} cannot be restored into this model and optimizer ({str(exc).splitlines()[0][:160]}). "
            "Resume with the run's own settings (precision, devices), restore the checkpoint files, or train into a "
            "new --output folder; nothing was changed."
        ) from None
    history = runs.read_history(run_dir)[: progress.epochs_done] if (run_dir / runs.HISTORY_JSON).is_file() else []
    if (run_dir / runs.HISTORY_JSON).is_file() and len(history) < progress.epochs_done:  # written before each save
        raise AekitError(
            f"{run_dir / runs.HISTORY_JSON} lists {len(history)} epoch(s) but the checkpoint has {progress.epochs_done}; "
            "nothing was changed. Restore the file, or train into a new --output folder."
        )
    start_epoch, start_step = progress.epochs_done, progress.steps_done
    if start_step and runs.is_run_dir(run_dir):
        stored_steps = read_config(run_dir).get("steps_per_epoch")
        if stored_steps != steps_per_epoch:  # another batch size: the saved position means other batches
            progress.start_epoch()
            start_step = 0
    if start_epoch >= config.epochs and (runs.is_finished(run_dir) or not history):
        raise AekitError(
            f"{run_dir} already finished {start_epoch} epoch(s). Pass --epochs larger than {start_epoch} "
            "to train further, or --output a new folder."
        )
    return history, start_epoch, start_step


def _has_trained(run_dir: Path) -> bool:
    """Whether the folder holds training progress a restart would overwrite."""
    ckpt = run_dir / runs.CHECKPOINTS
    return runs.is_finished(run_dir) or (run_dir / runs.HISTORY_JSON).is_file() or (ckpt.is_dir() and any(ckpt.iterdir()))


def _prepare_run_folder(
    run_dir: Path, config: TrainConfig, splits: DataSplits, placement: Placement, steps_per_epoch: int, plan: dict | None
) -> None:
    runs.write_json(run_dir / runs.CONFIG, _config_record(config, splits, placement, steps_per_epoch, plan))
    (run_dir / runs.METRICS).unlink(missing_ok=True)  # unfinished again until this run ends
    runs.remove_partials(run_dir)  # what a killed run was writing when it died


def _train_epochs(
    run: _Run, batches: DeviceImages | StreamedImages, history: list[dict], start_epoch: int, start_step: int
) -> list[dict]:
    """The loop: steps, the divergence check, step checkpoints, Ctrl-C at step boundaries, one row per epoch."""

    config, placement, model, state, callback = run.config, run.placement, run.model, run.state, run.callback
    progress, steps_per_epoch = state.progress, run.steps_per_epoch
    train_steps = make_train_steps(placement.strategy, model.autoencoder, model.optimizer, batches, placement.precision)
    step_macs = 3 * model_macs(model.autoencoder) * config.batch_size  # forward + backward, the global batch
    run.steps_per_call = steps_per_call(config.steps_per_execution, step_macs, placement.on_gpu, steps_per_epoch)
    grid_images = run.splits.scaling.to_model_numpy(run.splits.head("val", GRID_IMAGES))  # reconstructions.png, TensorBoard
    predict = tf.function(lambda x: model.autoencoder(x, training=False))
    run.predict, run.grid_images = predict, grid_images

    callback.on_train_begin(
        {
            "steps_per_call": run.steps_per_call,
            "run_dir": str(run.run_dir),
            "start_epoch": start_epoch,
            "start_step": start_step,
            "epochs": config.epochs,
            "steps_per_epoch": steps_per_epoch,
            "global_batch_size": config.batch_size,
            "data": run.splits.describe(),
            "placement": placement.describe(),
            "is_chief": placement.is_chief,
            "params": int(model.autoencoder.count_params()),
        }
    )
    if placement.kind == "multi_worker":
        identity = int(run.splits.describe().get("identity", "0")[:12], 16)  # packed data: the shards' hashes
        _check_workers_agree(placement.strategy, [run.splits.count("train"), steps_per_epoch, start_epoch, start_step, identity])
    epoch, step = start_epoch + 1, start_step
    tensorboard = TensorBoardLog(run.run_dir / runs.TENSORBOARD, enabled=placement.is_chief)
    stop = _StopRequest()  # Ctrl-C stops at the next step boundary, so the checkpoint is exact
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            callback.on_epoch_begin(epoch, steps_per_epoch)
            first = start_step + 1 if epoch == start_epoch + 1 else 1
            if first == 1:
                progress.start_epoch()
            feed = batches.epoch_state(epoch)
            earlier, started = progress.seconds, time.perf_counter()  # earlier: time spent before a resume
            step = first - 1
            while step < steps_per_epoch:  # one call runs k steps; a call never crosses an epoch end or a checkpoint
                k = _call_length(run.steps_per_call, step, steps_per_epoch, config.checkpoint_steps)
                losses = train_steps(feed, tf.constant(step, tf.int32), tf.constant(k, tf.int32)).numpy().astype(np.float64)
                if not np.isfinite(losses).all():
                    bad = int(np.argmin(np.isfinite(losses)))
                    raise AekitError(
                        f"Training diverged: loss is {losses[bad]} at epoch {epoch}, step {step + bad + 1}. "
                        "Lower --learning-rate (or use --precision float32) and train into a new folder."
                    )
                step += k
                elapsed = time.perf_counter() - started
                progress.step_done(step, float(losses.sum()), earlier + elapsed)
                callback.on_step_end(epoch, step, float(losses[-1]), (step - first + 1) * config.batch_size / max(elapsed, 1e-9))
                if config.checkpoint_steps and step % config.checkpoint_steps == 0 and step < steps_per_epoch:
                    state.save()
                stop.check()
            seconds = earlier + time.perf_counter() - started
            val_mse, val_psnr = _evaluate(predict, run.splits)
            row = {
                "epoch": epoch,
                "train_loss": progress.loss_sum / steps_per_epoch,
                "val_mse": val_mse,
                "val_psnr": val_psnr,
                "seconds": seconds,
                "samples_per_sec": steps_per_epoch * config.batch_size / seconds,
                "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
            }
            history.append(row)
            if placement.is_chief:  # history first: a kill before the save just repeats this epoch
                runs.write_history(run.run_dir, history)
                tensorboard.write_epoch(row, reconstruction_grid(grid_images, _predict_numpy(predict, grid_images)))
            progress.epoch_done(epoch)
            state.save()
            callback.on_epoch_end(epoch, row)
    except KeyboardInterrupt:
        if placement.kind != "multi_worker":  # a lone worker cannot run the collective save
            state.save()
        raise TrainingInterrupted(run.run_dir, progress.epochs_done, progress.steps_done) from None
    except tf.errors.OpError as exc:
        if placement.kind != "multi_worker":
            raise
        raise AekitError(
            f"Lost contact with another worker at epoch {epoch}, step {step} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}). Restart every worker with the same command; training resumes "
            f"from the last checkpoint in {state.dir}."
        ) from None
    finally:
        stop.restore()
        tensorboard.close()
        state.close()
    return history


def _call_length(per_call: int, done: int, steps_per_epoch: int, checkpoint_steps: int) -> int:
    """Steps in the next call: K, cut at the epoch's end and at the next step checkpoint."""
    k = min(per_call, steps_per_epoch - done)
    if checkpoint_steps:
        k = min(k, checkpoint_steps - done % checkpoint_steps)
    return k


def _finish(run: _Run, history: list[dict]) -> TrainResult:
    """Final metrics; on the chief the models, history, pictures and, last, metrics.json."""
    model, placement = run.model, run.placement
    metrics = _final_metrics(history, model.autoencoder, model.encoder, model.decoder)
    if placement.is_chief:
        encoder, decoder, autoencoder = _plain_models(run)
        _write_outputs(run.run_dir, history, encoder, decoder, autoencoder, run.predict, run.grid_images)
        runs.write_json(run.run_dir / runs.METRICS, metrics)
    result = TrainResult(run.run_dir, metrics, history, wrote_files=placement.is_chief, placement=placement.describe())
    run.callback.on_train_end(result)
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
        self.writers = {}
        if enabled:  # event files are append-only streams: no atomic rename, and a torn tail is skipped
            self.writers = {part: tf.summary.create_file_writer(str(folder / part)) for part in (self.TRAIN, self.VALIDATION)}

    def write_epoch(self, row: dict, grid: np.ndarray) -> None:
        """Writes one history row (see runs.HISTORY_FIELDS) and a (H, W, C) grid in [0, 1] at step row['epoch']."""
        if not self.writers:
            return
        step = row["epoch"]
        self._scalars(
            self.TRAIN,
            step,
            epoch_loss=row["train_loss"],
            epoch_learning_rate=row["learning_rate"],
            epoch_samples_per_sec=row["samples_per_sec"],
        )
        self._scalars(self.VALIDATION, step, epoch_loss=row["val_mse"], epoch_psnr=row["val_psnr"])
        self._image(self.VALIDATION, step, "reconstructions", grid)
        for writer in self.writers.values():
            writer.flush()  # on disk before the epoch's checkpoint, visible to a running TensorBoard

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}

    def _scalars(self, part: str, step: int, **values: float) -> None:
        with self.writers[part].as_default():
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_plugin_metadata("scalars"))

    def _image(self, part: str, step: int, tag: str, image: np.ndarray) -> None:
        # The images plugin's record: [width, height, PNG bytes...] as strings.
        png = tf.io.encode_png(tf.image.convert_image_dtype(image, tf.uint8, saturate=True))
        record = tf.stack([tf.as_string(image.shape[1]), tf.as_string(image.shape[0]), png])
        with self.writers[part].as_default():
            tf.summary.write(tag, record, step=step, metadata=_plugin_metadata("images"))


def _plugin_metadata(plugin: str):
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

    names = ("training images", "steps per epoch", "finished epochs", "steps into the epoch", "packed data (shard hashes)")
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
            f"Interrupted after epoch {epochs_done}"
            + (f" and {steps_done} steps of the next" if steps_done else "")
            + f"; checkpoint saved. Resume with: aekit train --resume {run_dir}"
        )


class _Progress:
    """Checkpointed counters of where training stands."""

    def __init__(self):
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

    def step_done(self, step: int, loss_sum: float, elapsed: float) -> None:
        """`step` steps of the epoch are done; `loss_sum` is the sum of the losses since the last call."""
        self.variables["steps_done"].assign(step)
        self.variables["epoch_loss_sum"].assign_add(loss_sum)
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
        if n_train < replicas:
            raise AekitError(
                f"{n_train} training images cannot give each of the {replicas} replicas one image per step. "
                "Add images, or train on fewer replicas."
            )
        # A quarter of the images keeps four steps an epoch; never fewer than one image per replica.
        fits = max(replicas, n_train // 4 // replicas * replicas)
        raise AekitError(
            f"--batch-size {config.batch_size} is larger than the {n_train} training images. "
            f"Use --batch-size {fits} (at most {n_train // replicas * replicas} fits), or add data."
        )
    return n_train // config.batch_size


FINAL_RATE = 0.01  # the cosine schedule ends at this fraction of the peak


def _schedule(config: TrainConfig, steps_per_epoch: int | None = None):
    """The optimizer's learning rate: a number, or a RunSchedule whose plan `_plan_schedule` sets once restored
    (given `steps_per_epoch`, the plan of a new run of `config.epochs`)."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    schedule = _run_schedule_class()()
    if steps_per_epoch is not None:
        schedule.plan = _new_plan(config, config.epochs * steps_per_epoch)
    return schedule


def _new_plan(config: TrainConfig, total_steps: int) -> dict:
    """A new run's plan: a warm-up (at most a quarter of the run), then a cosine decay to 1% by the last step."""
    total = max(total_steps, 1)
    return {
        "peak": config.learning_rate,
        "warmup_steps": min(config.warmup_steps, total // 4),
        "base_total_steps": total,
        "extensions": [],
    }


def _run_schedule_class():
    class RunSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """The run's plan (see `_plan_schedule`): a warm-up and cosine decay over the steps first planned,
        then, for each resume that changed the steps left, a cosine from the rate reached to 1% of the peak."""

        def __init__(self, plan: dict | None = None):
            self.plan = plan

        def __call__(self, step):
            plan, step = self.plan, tf.cast(step, tf.float32)
            warmup = plan["warmup_steps"]
            base = keras.optimizers.schedules.CosineDecay(
                plan["peak"] / 10 if warmup else plan["peak"],
                decay_steps=plan["base_total_steps"] - warmup,
                alpha=FINAL_RATE,
                warmup_target=plan["peak"] if warmup else None,
                warmup_steps=warmup,
            )
            rate = base(step)
            for piece in plan["extensions"]:
                start, end = float(piece["from_step"]), float(piece["to_step"])
                done = tf.clip_by_value((step - start) / max(end - start, 1.0), 0.0, 1.0)
                cosine = piece["to_lr"] + (piece["from_lr"] - piece["to_lr"]) * 0.5 * (1.0 + tf.cos(math.pi * done))
                rate = tf.where(step >= start, tf.cast(cosine, rate.dtype), rate)
            return rate

        def get_config(self) -> dict:
            return {"plan": self.plan}

    return RunSchedule


def _plan_schedule(run_dir: Path, config: TrainConfig, model: _Model, steps_per_epoch: int, start_epoch: int, start_step: int):
    """The learning-rate plan of this (re)start, set on the optimizer's schedule and recorded in config.json.

    A new run plans a warm-up and cosine decay over all its steps. A resume whose steps left still end
    where the plan ends keeps it, so the run is the run it would have been. A resume that moves the end
    (more --epochs, another --batch-size) continues from the rate it reached, with a cosine down to 1%
    of the peak at the new last step: no jump. A new --learning-rate starts that cosine at the new peak.
    """
    if config.lr_schedule != "cosine":
        return None
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # LossScaleOptimizer wraps the one that steps
    schedule = optimizer._learning_rate  # the RunSchedule given to the constructor
    done = int(optimizer.iterations.numpy())
    end = done + (config.epochs - start_epoch) * steps_per_epoch - start_step
    previous = _previous_plan(run_dir) if done else None
    if previous is None:
        plan = _new_plan(config, end)
    else:
        plan = {**previous, "extensions": list(previous["extensions"])}
        last_end = plan["extensions"][-1]["to_step"] if plan["extensions"] else plan["base_total_steps"]
        if last_end != end or plan.get("current_peak", plan["peak"]) != config.learning_rate:
            schedule.plan = plan
            reached = float(schedule(done).numpy())
            new_peak = plan.get("current_peak", plan["peak"]) != config.learning_rate
            plan["extensions"].append(
                {
                    "from_step": done,
                    "to_step": max(end, done + 1),
                    "from_lr": config.learning_rate if new_peak else reached,
                    "to_lr": FINAL_RATE * config.learning_rate,
                }
            )
            plan["current_peak"] = config.learning_rate
    schedule.plan = plan
    return plan


def _previous_plan(run_dir: Path) -> dict | None:
    """The plan config.json recorded; for a run recorded before plans, the one its recipe implied."""
    if not runs.is_run_dir(run_dir):
        return None
    record = read_config(run_dir)
    if isinstance(record.get("lr_plan"), dict):
        return record["lr_plan"]
    recipe, steps = TrainConfig.from_json(record["recipe"]), record.get("steps_per_epoch")
    if recipe.lr_schedule != "cosine" or not isinstance(steps, int) or recipe.learning_rate is None:
        return None
    total = recipe.epochs * steps
    warmup = min(recipe.warmup_steps or 0, total // 4)
    return {"peak": recipe.learning_rate, "warmup_steps": warmup, "base_total_steps": total, "extensions": []}


def make_train_steps(strategy, model, optimizer, batches, precision: str):
    """`train_steps(state, first, steps)`: `steps` training steps in one call, from global batch `first` on.

    `batches` supplies each step's images inside the call: with `DeviceImages`, `state` is the
    epoch's order and each replica gathers its slice on its device; with `StreamedImages`, it is
    the stream of packed shards. The losses of the steps come back together; the host reads
    them once per call.
    """

    scaled = precision == "mixed_float16"
    global_batch_size = batches.global_batch

    def replica_step(*args):
        images = batches.fetch(*args)
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
    def train_steps(state, first, steps):
        losses = tf.TensorArray(tf.float32, size=steps)
        for i in tf.range(steps):
            per_replica = strategy.run(replica_step, args=batches.args(state, first + i))
            losses = losses.write(i, strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
        return losses.stack()

    return train_steps


GPU_FLOPS, GPU_CALL_SECONDS = 25e12, 0.010  # a conservative GPU rate; work per call that hides the call's cost
CPU_FLOPS, CPU_CALL_SECONDS = 100e9, 0.25  # a conservative CPU rate; calls short enough for lively progress and Ctrl-C
MAX_STEPS_PER_CALL = {True: 1000, False: 100}


def steps_per_call(requested: int, step_macs: float, on_gpu: bool, steps_per_epoch: int) -> int:
    """K, the training steps one call runs: `requested`, or (0 = auto) enough work to hide the call's cost.

    A call costs a Python round trip and a device-to-host read of the losses. On a GPU a step of
    this model is tens of microseconds, so auto gives ~10 ms of GPU work per call (at a conservative
    25 TFLOP/s); on a CPU it saves ~2 ms of a ~28 ms step (benchmarks/loop_overhead.py), and auto
    gives ~0.25 s of work per call (at 100 GFLOP/s), so progress and Ctrl-C still answer at once.
    """
    if requested:
        return max(1, min(requested, steps_per_epoch))
    rate, seconds = (GPU_FLOPS, GPU_CALL_SECONDS) if on_gpu else (CPU_FLOPS, CPU_CALL_SECONDS)
    seconds_per_step = 2 * step_macs / rate
    return max(1, min(steps_per_epoch, MAX_STEPS_PER_CALL[on_gpu], math.ceil(seconds / max(seconds_per_step, 1e-9))))


def model_macs(model) -> int:
    """Multiply-adds of one forward pass of one image through a chain of Conv2D/Conv2DTranspose/Dense layers."""

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_macs(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kernel = layer.kernel.shape  # (kh, kw, in, out); (kh, kw, out, in) for transposed
            # A convolution computes each output pixel; a transposed one scatters each input pixel.
            where = layer.input if isinstance(layer, keras.layers.Conv2DTranspose) else layer.output
            total += int(where.shape[1] * where.shape[2] * kernel[0] * kernel[1] * kernel[2] * kernel[3])
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0] * layer.kernel.shape[1])
    return total


def _predict_numpy(predict, images: np.ndarray) -> np.ndarray:
    batch = inference_batch(images.shape[1:])
    out = [np.asarray(predict(images[i : i + batch]), np.float32) for i in range(0, len(images), batch)]
    return np.concatenate(out)


def _evaluate(predict, splits) -> tuple[float, float]:
    """Validation MSE and PSNR, the split read a batch at a time (streamed when packed)."""
    per_image = np.concatenate(
        [
            mse_per_image(images, np.asarray(predict(images), np.float32))
            for images in splits.model_batches("val", inference_batch(splits.image_shape))
        ]
    )
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


def _plain_models(run: _Run):
    """The trained models with plain Keras layers (no training kernels, unsynchronized BatchNorm): what is saved.

    Inference is the same function; the saved `.keras` files then load with Keras alone.
    """
    from aekit.model import build_autoencoder

    config = run.config
    encoder, decoder, autoencoder = build_autoencoder(
        run.splits.image_shape, config.filters, config.latent_dim, bn_momentum=config.bn_momentum
    )
    autoencoder.set_weights(run.model.autoencoder.get_weights())
    return encoder, decoder, autoencoder


def _write_outputs(run_dir, history, encoder, decoder, autoencoder, predict, grid_images) -> None:
    from aekit.plots import plot_history, plot_reconstructions

    for name, model in (("encoder", encoder), ("decoder", decoder), ("autoencoder", autoencoder)):
        with runs.atomic_path(run_dir / runs.MODEL_FILES[name]) as tmp:
            model.save(tmp)
    runs.write_history(run_dir, history)
    plot_history(history, run_dir / runs.LOSS_PLOT)
    plot_reconstructions(grid_images, _predict_numpy(predict, grid_images), run_dir / runs.RECONSTRUCTIONS)


def _config_record(
    config: TrainConfig, splits: DataSplits, placement: Placement, steps_per_epoch: int, plan: dict | None = None
) -> dict:
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
        "lr_plan": plan,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "pid": os.getpid(),
    }
