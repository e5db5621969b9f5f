"""Checkpoints: the model, optimizer and where training stands, saved together and restored exactly."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aekit.core import runs
from aekit.core.recipe import TrainConfig
from aekit.errors import AekitError
from aekit.lazy import tf
from aekit.training.distribute import Placement
from aekit.training.resources import training_resource_error


@dataclass
class Model:
    """What training holds: the three Keras models (built under the strategy) and the optimizer."""

    encoder: object
    decoder: object
    autoencoder: object
    optimizer: object


class _Checkpoints:
    """The model, optimizer and where training stands, saved together under <run>/checkpoints."""

    def __init__(self, run_dir: Path, model: Model, placement: Placement):
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
        """Saves a checkpoint; a full disk or a file limit meanwhile is an AekitError naming it (the last
        complete checkpoint stays the one restored: TensorFlow lists a checkpoint once it is whole)."""
        try:
            self.manager.save()
        except (tf.errors.OpError, OSError) as exc:
            for partial in self.save_dir.glob("*_temp*"):  # what the failed save left half-written
                if partial.is_dir():
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    partial.unlink(missing_ok=True)
            error = training_resource_error(exc, self.run_dir, f"saving a checkpoint in {self.dir}")
            if error is None:
                raise
            raise error from None

    def close(self) -> None:
        if not self.is_chief:
            shutil.rmtree(self.save_dir, ignore_errors=True)


def _restore(
    state: _Checkpoints, config: TrainConfig, steps_per_epoch: int, previous: dict | None = None
) -> tuple[list[dict], int, int]:
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
    if start_step and previous is not None:
        if previous.get("steps_per_epoch") != steps_per_epoch:  # another batch size: the saved position means other batches
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
