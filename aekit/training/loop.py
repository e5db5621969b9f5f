"""Training: one custom loop that serves every tf.distribute strategy.

`strategy.run` executes a `tf.function` step on every replica and
`strategy.reduce` sums the per-replica losses. The same loop runs on one CPU,
mirrored over GPUs or logical CPUs, and under MultiWorkerMirroredStrategy, where
Keras 3's `fit` breaks (keras-team/keras#20585). The data stream is endless and
every epoch runs a fixed number of steps, so all workers finish together.
`train()` reads as the table of contents of training.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aekit import __version__
from aekit.core import runs
from aekit.core.metrics import mse_per_image, psnr_from_mse
from aekit.core.recipe import TrainConfig, read_config
from aekit.data.feeds import DeviceImages, StreamedImages, check_divisible, inference_batch
from aekit.data.loading import DataSplits, PackedSplits, check_same_data, load_data
from aekit.errors import AekitError
from aekit.lazy import keras, tf
from aekit.training.checkpoints import Model, _Checkpoints, _restore
from aekit.training.distribute import Placement, make_placement
from aekit.training.plots import reconstruction_grid
from aekit.training.resources import resource_code, training_resource_error
from aekit.training.schedule import _plan_schedule, _schedule
from aekit.training.steps import make_train_steps, model_macs, steps_per_call
from aekit.training.tensorboard import TensorBoardLog

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
    except (tf.errors.OpError, MemoryError, OSError) as exc:  # a full disk, a file limit, memory: named for what it is
        error = training_resource_error(exc, run_dir)
        if error is None:
            raise
        raise error from None


def _train(config: TrainConfig, run_dir: Path, callback: TrainCallback, placement: Placement) -> TrainResult:
    with _claim(run_dir, placement):
        splits, steps_per_epoch = _load_data(config, placement)
        previous = read_config(run_dir) if runs.is_run_dir(run_dir) else None  # a resume's record, read once
        if previous is not None:  # a pack must still hold the shards the run trained on
            check_same_data(previous.get("data") or {}, splits, str(run_dir))
        model = _build_model(config, placement, splits.image_shape, steps_per_epoch)
        state = _Checkpoints(run_dir, model, placement)
        history, start_epoch, start_step = _restore(state, config, steps_per_epoch, previous)
        plan = _plan_schedule(previous, config, model, steps_per_epoch, start_epoch, start_step)
        if placement.is_chief:
            _prepare_run_folder(run_dir, config, splits, placement, steps_per_epoch, plan)
        batches = _training_batches(config, placement, splits, steps_per_epoch, start_epoch, start_step)
        run = _Run(config, placement, run_dir, splits, steps_per_epoch, model, state, callback)
        try:
            history = _train_epochs(run, batches, history, start_epoch, start_step)
        except tf.errors.DataLossError as exc:  # a record whose checksum fails, met mid-training
            if not isinstance(splits, PackedSplits):
                raise
            raise splits.packed.damaged(exc) from None
        return _finish(run, history)


@dataclass
class _Run:
    """What the epochs need: settings, devices, data, model, checkpoints, who listens."""

    config: TrainConfig
    placement: Placement
    run_dir: Path
    splits: DataSplits
    steps_per_epoch: int
    model: Model
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


def _build_model(config: TrainConfig, placement: Placement, image_shape, steps_per_epoch: int) -> Model:
    from aekit.training.kernels import FusedAdam
    from aekit.training.model import build_autoencoder

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
    return Model(encoder, decoder, autoencoder, optimizer)


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
        if placement.kind != "multi_worker" or isinstance(exc, tf.errors.DataLossError) or resource_code(exc):
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
    from aekit.training.model import build_autoencoder

    config = run.config
    encoder, decoder, autoencoder = build_autoencoder(
        run.splits.image_shape, config.filters, config.latent_dim, bn_momentum=config.bn_momentum
    )
    autoencoder.set_weights(run.model.autoencoder.get_weights())
    return encoder, decoder, autoencoder


def _write_outputs(run_dir, history, encoder, decoder, autoencoder, predict, grid_images) -> None:
    from aekit.training.plots import plot_history, plot_reconstructions

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
