"""`aekit train`: its options are the recipe's fields (TrainConfig), each with its help text and default."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
import typer.exceptions

from aekit import AekitError
from aekit.cli.app import user_errors
from aekit.cli.render import err_console, out_console
from aekit.core.recipe import (  # noqa: E402
    BASE_LEARNING_RATE,
    CPU_BATCH,
    GPU_BATCH_PER_REPLICA,
    MAX_LEARNING_RATE,
    WARMUP_IMAGES,
    TrainConfig,  # noqa: E402
)

RECIPE = TrainConfig()  # the default recipe; help texts quote it rather than repeat it


def parse_filters(text: str) -> tuple[int, ...]:
    try:
        filters = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        filters = ()
    if not filters or min(filters) < 1:
        raise AekitError(f"--filters {text!r} is not a comma-separated list of positive integers. Use e.g. --filters 32,64.")
    return filters


# Help texts of the train options; options that set the recipe add "(default: ...)" from TrainConfig.
TRAIN_HELP = {
    "dataset": "TFDS name (e.g. mnist, fashion_mnist, cifar10), a folder of IDX files, a .npz/.npy file, or a folder of "
    "PNG/JPEG images. Default: TFDS mnist, or the bundled MNIST sample when offline.",
    "epochs": "Epochs to train (in all, counting resumed ones).",
    "batch_size": f"GLOBAL batch size, split evenly across replicas (default: {CPU_BATCH} on a CPU, "
    f"{GPU_BATCH_PER_REPLICA} per GPU on GPUs).",
    "learning_rate": f"Peak Adam learning rate for the global batch (default: {BASE_LEARNING_RATE:g} at batch {CPU_BATCH}, "
    f"scaled by sqrt(batch/{CPU_BATCH}) up to {MAX_LEARNING_RATE:g}).",
    "lr_schedule": "cosine (decay to 1% over the run) or constant.",
    "warmup_steps": "Cosine schedule: steps of linear warm-up from a tenth of the peak rate (at most a quarter of the run); "
    f"0 for none (default: {WARMUP_IMAGES:,} images' worth, 150 steps at batch {CPU_BATCH}).",
    "filters": "Channels of each stride-2 conv block. Image sides must divide by 2^blocks.",
    "latent_dim": "Size of the latent code.",
    "bn_momentum": "BatchNorm moving-average momentum.",
    "val_split": "For sources with one split: the fraction held out for validation, a seeded random draw "
    "(stratified over an image folder's sub-folders).",
    "val_from_end": "Hold out the LAST --val-split of the source instead, for data ordered on purpose (time series, frames).",
    "pixel_max": "The value of white when pixels are not 0-255 or 0-1 (e.g. 16 for 0-16 digits, 4095 for 12-bit); "
    "recorded in the run and its exports.",
    "gpus": "0 = CPU; N = MirroredStrategy over N GPUs. Default: every visible GPU, else CPU.",
    "cpu_replicas": "Split the CPU into N logical devices and mirror over them (multi-replica path without GPUs).",
    "precision": "auto | float32 | mixed_float16 | mixed_bfloat16. auto: mixed_float16 on GPUs, float32 on CPU.",
    "seed": "Random seed for weights and shuffling.",
    "output": "Run folder. Default: runs/<name or timestamp>. An existing run folder is resumed.",
    "name": "Name of the run folder under runs/.",
    "resume": "Continue the run in this folder from its last finished epoch.",
    "data_dir": "TFDS data directory (default: TFDS's own).",
    "checkpoint_steps": "Also checkpoint every N steps within an epoch (default: at epoch ends only).",
    "workers": "Multi-worker by hand: host:port of every worker, comma-separated (worker 0 is the chief). Sets TF_CONFIG.",
    "task_index": "With --workers: this worker's index.",
    "worker_timeout": "Multi-worker: seconds to wait for every peer to answer at start-up before giving up.",
    "adam_beta_2": "Adam's second-moment decay.",
    "config": "A recipe file (YAML, JSON or TOML) of these settings by name, e.g. latent_dim: 64; options given here win.",
    "print_recipe": "Print the recipe this command would train with (YAML that --config reads) and exit.",
    "steps_per_execution": "Training steps per tf.function call; the host reads the losses once per call. "
    "0 = auto: about 10 ms of GPU work per call (~100 steps for this model), or 0.25 s of CPU work (~10 steps).",
}
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# Settings whose help quotes the default recipe's value (the others are chosen when training starts, or flags).
RECIPE_DEFAULTS = {
    name for name in RECIPE_FIELDS if getattr(RECIPE, name) is not None and not isinstance(getattr(RECIPE, name), bool)
}


def train_option(name: str, *flags: str, **extra):
    """The typer.Option of a train setting: its help text, with the default recipe's value where it has one."""
    text = TRAIN_HELP[name]
    if name in RECIPE_DEFAULTS:
        value = getattr(RECIPE, name)
        shown = (
            ",".join(map(str, value)) if isinstance(value, tuple) else format(value, "g") if isinstance(value, float) else value
        )
        text += f" (default: {shown})"
    return typer.Option(*flags, help=text, **extra)


@user_errors
def train(
    dataset: Annotated[Optional[str], train_option("dataset")] = None,
    epochs: Annotated[Optional[int], train_option("epochs")] = None,
    batch_size: Annotated[Optional[int], train_option("batch_size")] = None,
    learning_rate: Annotated[Optional[float], train_option("learning_rate")] = None,
    lr_schedule: Annotated[Optional[str], train_option("lr_schedule")] = None,
    warmup_steps: Annotated[Optional[int], train_option("warmup_steps")] = None,
    filters: Annotated[Optional[str], train_option("filters")] = None,
    latent_dim: Annotated[Optional[int], train_option("latent_dim")] = None,
    bn_momentum: Annotated[Optional[float], train_option("bn_momentum")] = None,
    val_split: Annotated[Optional[float], train_option("val_split")] = None,
    val_from_end: Annotated[Optional[bool], train_option("val_from_end", "--val-from-end", show_default=False)] = None,
    pixel_max: Annotated[Optional[float], train_option("pixel_max")] = None,
    gpus: Annotated[Optional[int], train_option("gpus")] = None,
    cpu_replicas: Annotated[Optional[int], train_option("cpu_replicas")] = None,
    precision: Annotated[Optional[str], train_option("precision")] = None,
    seed: Annotated[Optional[int], train_option("seed")] = None,
    output: Annotated[Optional[Path], train_option("output", "--output", "-o")] = None,
    name: Annotated[Optional[str], train_option("name")] = None,
    resume: Annotated[Optional[Path], train_option("resume")] = None,
    data_dir: Annotated[Optional[str], train_option("data_dir")] = None,
    checkpoint_steps: Annotated[Optional[int], train_option("checkpoint_steps")] = None,
    workers: Annotated[Optional[str], train_option("workers")] = None,
    task_index: Annotated[Optional[int], train_option("task_index")] = None,
    worker_timeout: Annotated[Optional[float], train_option("worker_timeout")] = None,
    steps_per_execution: Annotated[Optional[int], train_option("steps_per_execution")] = None,
    adam_beta_2: Annotated[Optional[float], train_option("adam_beta_2")] = None,
    config_file: Annotated[Optional[Path], train_option("config", "--config")] = None,
    print_recipe: Annotated[bool, train_option("print_recipe", "--print-recipe")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables; errors only.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final metrics as one JSON object on stdout.")] = False,
):
    """Train the convolutional autoencoder and write a run folder."""
    from aekit.cli.render import TrainProgress, render_train_summary
    from aekit.core import runs
    from aekit.core.recipe import plan_run
    from aekit.data.loading import packed_val_split
    from aekit.training.loop import train as run_training

    settings = locals()
    given = {name: settings[name] for name in RECIPE_FIELDS}  # every recipe setting is a train option (tests hold it)
    if filters is not None:
        given["filters"] = parse_filters(filters)
    if workers is not None or task_index is not None:
        from aekit.training.distribute import tf_config_for

        if workers is None or task_index is None:
            raise AekitError("--workers and --task-index go together: list every worker and say which one this is.")
        os.environ["TF_CONFIG"] = tf_config_for(workers, task_index)
    if config_file is not None:  # the file's settings count as given; options on the command line win
        from aekit.core.recipe import read_recipe_file

        given = {**read_recipe_file(config_file), **{key: value for key, value in given.items() if value is not None}}
    explicit = {key for key, value in given.items() if value is not None}
    config = TrainConfig(**{key: given[key] for key in explicit})

    run_dir, config = plan_run(config, explicit, resume, output, name)
    if print_recipe:
        from aekit.core.recipe import recipe_text

        out_console.print(f"# {'resumes' if (run_dir / runs.CONFIG).is_file() else 'new run in'} {run_dir}", highlight=False)
        out_console.print("# null: chosen for the devices when training starts (see aekit train --help)", highlight=False)
        out_console.print(recipe_text(config), end="", highlight=False, soft_wrap=True)
        return
    split = packed_val_split(config.dataset) if "val_split" in explicit else None
    if split is not None and abs(split - config.val_split) > 1e-9:
        raise AekitError(
            f"--val-split {config.val_split}: {config.dataset} is a pack, split when it was packed (validation"
            f" fraction {split:g}). Drop --val-split, or pack again with: aekit data pack SOURCE OUT"
            f" --val-split {config.val_split}"
        )

    progress = None if (quiet or json_out) else TrainProgress(err_console)
    result = run_training(config, run_dir, progress)
    if json_out:
        data = runs.read_json(result.run_dir / runs.CONFIG)["data"] if result.wrote_files else {}
        print(
            json.dumps(
                {
                    "run_dir": str(result.run_dir),
                    **result.metrics,
                    "placement": result.placement,
                    "data_source": data.get("source"),
                    "data_note": data.get("note"),
                }
            )
        )
    elif not quiet:
        render_train_summary(out_console, result)
