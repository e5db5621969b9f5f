"""TensorBoard summaries per epoch, written as Keras' TensorBoard callback lays them out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aekit.lazy import summary_pb2, tf


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
