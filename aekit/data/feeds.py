"""Where each training step's images come from: held on the devices, or streamed from packed shards.

Both give the loop the same interface: `epoch_state(epoch)`, `args(state, step)` and, in replica
context, `fetch(*args)` -> this replica's float32 batch in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np

from aekit.core.pixels import PixelScaling
from aekit.errors import AekitError
from aekit.lazy import tf

INFERENCE_VALUES = 512 * 28 * 28  # values per image batch of an inference call: 512 MNIST digits (~0.4 M)


def inference_batch(*shapes) -> int:
    """Images per inference call: 512 digits' worth of values, for the largest of `shapes` (per image).

    Activations grow with the image: at 128x128 a batch of 512 needs gigabytes, a batch of 8 does not.
    """
    largest = max(math.prod(int(d) for d in shape) for shape in shapes)
    return max(1, min(512, INFERENCE_VALUES // max(largest, 1)))


def check_divisible(image_shape: tuple[int, ...], depth: int) -> None:
    """Raises AekitError unless both image sides divide by 2**depth (one halving per conv block)."""
    factor = 2**depth
    height, width = image_shape[0], image_shape[1]
    if height % factor or width % factor:
        fit_h, fit_w = max(factor, height // factor * factor), max(factor, width // factor * factor)
        raise AekitError(
            f"Images are {height}x{width}x{image_shape[2]}, but with {depth} conv blocks both sides must "
            f"divide by {factor}. Resize or crop them (e.g. to {fit_h}x{fit_w}) or use fewer --filters."
        )


class DeviceImages:
    """The in-memory training images, held where the steps run: each step gathers and scales its batch there.

    Epoch e's order is a seeded permutation that depends only on (seed, e). Global batch s of
    the epoch is `order[s*B : (s+1)*B]`, and replica r of R (over every worker) takes the r-th
    slice of it, so each image is seen at most once per epoch across replicas and workers, and a
    run resumed at (e, s) sees exactly the batches an uninterrupted run would. The host's only
    per-step work is the call itself; per epoch it computes the order (a few microseconds per image).

    On GPUs every replica gets its own copy, in float16 for uint8 images (0-255 are exact in
    float16, and TensorFlow's GPU gather kernels are registered for floating types; 2 bytes a
    pixel). On CPUs one copy in the stored dtype serves every replica.

    Args:
        images: (N, H, W, C) stored images.
        scaling: the source's PixelScaling (applied in the step, on the device).
        strategy: the tf.distribute strategy the steps run under.
        global_batch: images per step over all replicas.
        seed: the run's seed.
        on_gpu: whether the replicas are GPUs.

    Example:
        >>> images = DeviceImages(splits.train, splits.scaling, strategy, 64, seed=0, on_gpu=False)
        >>> order = images.epoch_order(1)
        >>> per_replica = strategy.run(images.fetch, args=images.args(order, step=0))
    """

    def __init__(self, images: np.ndarray, scaling: PixelScaling, strategy, global_batch: int, seed: int, on_gpu: bool):
        if len(images) < global_batch:
            raise AekitError(f"{len(images)} images cannot fill a batch of {global_batch}. Lower --batch-size or add data.")
        self.count, self.scaling, self.global_batch, self.seed = len(images), scaling, global_batch, seed
        self.per_replica = global_batch // strategy.num_replicas_in_sync
        self.shared = None
        self.tables = ()
        if on_gpu:
            table = images.astype(np.float16) if images.dtype == np.uint8 else images
            self.tables = (strategy.experimental_distribute_values_from_function(lambda context: tf.constant(table)),)
        else:
            self.shared = tf.constant(images)

    def epoch_state(self, epoch: int):
        """What the steps of `epoch` take: its order."""
        return self.epoch_order(epoch)

    def epoch_order(self, epoch: int):
        """The permutation of image indices for `epoch` (int32), a function of (seed, epoch) alone."""

        indices = tf.range(self.count, dtype=tf.int32)
        return tf.random.experimental.stateless_shuffle(indices, seed=tf.constant([self.seed, epoch], tf.int64))

    def args(self, order, step):
        """What `strategy.run(self.fetch, args=...)` takes for global batch `step` of the epoch ordered by `order`."""
        return (*self.tables, order[step * self.global_batch : (step + 1) * self.global_batch])

    def fetch(self, *args):
        """In replica context: this replica's slice of the global batch, gathered and scaled to float32 [0, 1]."""

        *table, ids = args
        table = table[0] if table else self.shared
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        mine = ids[replica * self.per_replica : (replica + 1) * self.per_replica]
        return self.scaling.to_model_tf(tf.gather(table, mine))


class StreamedImages:
    """Training batches streamed from packed shards (`aekit data pack`): the same interface as DeviceImages.

    Each worker reads only its own shard files (file-level sharding) through tf.data, as uint8
    batches scaled in the step on the device. Epoch e's order depends only on (seed, e), and the
    stream starts at (start_epoch, start_step), so a resumed run sees the batches an uninterrupted
    run would.

    Args:
        packed: the PackedDataset.
        strategy: the tf.distribute strategy the steps run under.
        global_batch: images per step over all replicas.
        steps_per_epoch: steps per epoch (`packed.steps_per_epoch(global_batch, workers)`).
        seed, start_epoch, start_step: the run's seed and where it resumes.
    """

    def __init__(self, packed, strategy, global_batch: int, steps_per_epoch: int, seed: int, start_epoch: int, start_step: int):
        self.packed, self.scaling, self.global_batch = packed, packed.scaling, global_batch
        self.replicas, self.steps_per_epoch, self.seed = strategy.num_replicas_in_sync, steps_per_epoch, seed
        self.start_epoch, self.start_step = start_epoch, start_step
        self.iterator = iter(strategy.distribute_datasets_from_function(self.dataset))

    def dataset(self, context, with_index: bool = False):
        """The stream of one worker (`context`: its tf.distribute.InputContext): per-replica uint8 batches."""
        per_pipeline = self.replicas // context.num_input_pipelines  # replicas fed by this worker
        return self.packed.train_stream(
            context.get_per_replica_batch_size(self.global_batch),
            self.steps_per_epoch * per_pipeline,
            seed=self.seed,
            start_epoch=self.start_epoch,
            skip_batches=self.start_step * per_pipeline,
            num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
            with_index=with_index,
        )

    def epoch_state(self, epoch: int):
        """The stream itself: it is positioned, and its epochs are ordered, from the start."""
        return self.iterator

    def args(self, iterator, step):
        return (next(iterator),)

    def fetch(self, images):
        return self.scaling.to_model_tf(images)
