"""The recipe and the run-folder rules: what a run trains with, where it goes, and whether it resumes.

TensorFlow-free. The CLI asks this module which folder a run uses and with which
settings (a new run, or the stored recipe of one to resume); `aekit.training.loop.train`
obeys. `TrainConfig`'s defaults are aekit's default recipe.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from aekit.core import runs
from aekit.core.pixels import check_pixel_max
from aekit.errors import AekitError
from aekit.lazy import training_python_problem

# Recipe fields added after runs were already being recorded, with the value those runs trained with.
RECIPE_BEFORE_FIELD = {"warmup_steps": 0, "adam_beta_2": 0.999, "val_from_end": True}

# The batch, rate and warm-up a run gets when it does not set them (TrainConfig.resolve).
CPU_BATCH = 64  # global batch on a CPU (any number of CPU replicas)
GPU_BATCH_PER_REPLICA = 256  # per GPU; the global batch is this times the GPUs (docs/benchmarks.md, benchmarks/batch_scaling.py)
BASE_LEARNING_RATE = 5e-3  # the peak rate tuned for CPU_BATCH
MAX_LEARNING_RATE = 2e-2  # where scaling stops: the highest rate measured to train well (batch 1024)
WARMUP_IMAGES = 150 * CPU_BATCH  # the warm-up, in images: 150 steps of 64


@dataclass
class TrainConfig:
    """The recipe. Its defaults are aekit's default recipe (docs/benchmarks.md, benchmarks/).

    `batch_size` is the GLOBAL batch, split evenly over replicas. None (the
    default) means 64 on a CPU and GPU_BATCH_PER_REPLICA per GPU on GPUs, so
    every GPU gets work enough to fill it. The learning rate is the peak of the
    schedule: a linear warm-up from a tenth of it over `warmup_steps` (at most a
    quarter of the run), then a cosine decay to 1% by the last step of the
    requested epochs, so a short run anneals as well as a long one. It was tuned
    for batch 64 (5e-3: the warm-up lets it start that high, which learns faster
    than 2e-3 both in a short demo and over 25 epochs). None means 5e-3 scaled
    by sqrt(batch / 64), at most 2e-2, and a warm-up of 9,600 images' worth of
    steps: `resolve()` fills them in for the devices at hand, and config.json
    records the values used (benchmarks/batch_scaling.py, docs/benchmarks.md).

    Adam's beta_2 is 0.99 rather than Keras' 0.999: the second-moment average then
    forgets the large gradients of the first steps within ~100 steps instead of
    ~1,000, which measurably helps runs of a few thousand steps (docs/benchmarks.md).

    BatchNorm momentum is 0.9 rather than Keras' 0.99: with a few hundred steps
    per epoch the 0.99 moving statistics lag the weights, and validation (which
    uses them) reads far worse than training for the first epochs.
    See benchmarks/train_vs_reference.py for how the recipe compares.
    """

    dataset: str | None = None
    val_split: float = 0.1
    val_from_end: bool = False  # hold out the last val_split instead of a seeded, stratified draw (aekit.core.splits)
    pixel_max: float | None = None  # the source's white level when not 0-255 or 0-1 (aekit.core.pixels)
    epochs: int = 25
    batch_size: int | None = None  # None: CPU_BATCH, or GPU_BATCH_PER_REPLICA per GPU
    learning_rate: float | None = None  # None: BASE_LEARNING_RATE scaled to the batch (see resolve)
    lr_schedule: str = "cosine"
    warmup_steps: int | None = None  # None: WARMUP_IMAGES worth of steps
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
    worker_timeout: float = 300.0  # multi-worker: seconds to wait for every peer at start-up
    steps_per_execution: int = 0  # training steps per tf.function call (0: auto, ~10 ms of device work per call)

    # Settings that define the model or the data; a resumed run must keep them.
    FIXED_ON_RESUME = (
        "dataset",
        "val_split",
        "val_from_end",
        "pixel_max",
        "filters",
        "latent_dim",
        "bn_momentum",
        "seed",
        "lr_schedule",
        "precision",
    )

    def validate(self) -> None:
        if self.epochs < 1:
            raise AekitError(f"--epochs must be at least 1, got {self.epochs}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise AekitError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise AekitError(f"--learning-rate must be a positive number, got {self.learning_rate}. Try 5e-3.")
        if not (math.isfinite(self.val_split) and 0.0 < self.val_split < 1.0):
            raise AekitError(f"--val-split must be between 0 and 1 (exclusive), got {self.val_split}. Try 0.1.")
        check_pixel_max(self.pixel_max)
        if not (math.isfinite(self.worker_timeout) and self.worker_timeout > 0):
            raise AekitError(f"--worker-timeout must be a positive number of seconds, got {self.worker_timeout}.")
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
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise AekitError(f"--warmup-steps must be 0 (no warm-up) or more, got {self.warmup_steps}.")
        if self.steps_per_execution < 0:
            raise AekitError(f"--steps-per-execution must be 0 (auto) or more, got {self.steps_per_execution}.")
        if self.checkpoint_steps < 0:
            raise AekitError(f"--checkpoint-steps must be 0 (epoch ends only) or more, got {self.checkpoint_steps}.")

    def resolve(self, gpus: int) -> TrainConfig:
        """This recipe with the batch, learning rate and warm-up filled in for `gpus` GPU replicas (0: a CPU).

        An explicit batch is the global batch, whatever the devices. The rate not given is
        BASE_LEARNING_RATE * sqrt(batch / CPU_BATCH), at most MAX_LEARNING_RATE (and never
        below the base); the warm-up not given is WARMUP_IMAGES / batch steps.
        """
        batch = self.batch_size or (GPU_BATCH_PER_REPLICA * gpus if gpus else CPU_BATCH)
        rate = self.learning_rate or min(MAX_LEARNING_RATE, max(BASE_LEARNING_RATE, default_learning_rate(batch)))
        warmup = self.warmup_steps if self.warmup_steps is not None else max(1, round(WARMUP_IMAGES / batch))
        return TrainConfig(**{**asdict(self), "batch_size": batch, "learning_rate": rate, "warmup_steps": warmup})

    def to_json(self) -> dict:
        data = asdict(self)
        data["filters"] = list(self.filters)
        return data

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values = {**RECIPE_BEFORE_FIELD, **values}  # a run recorded before a field existed keeps its old value
        if "filters" in values:
            values["filters"] = tuple(values["filters"])
        return cls(**values)


RECIPE_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def read_recipe_file(path: str | Path) -> dict:
    """The recipe settings in a YAML, JSON or TOML file, by TrainConfig's field names (dashes allowed).

    `aekit train --config FILE` applies them as if given on the command line; options given there too
    win. Raises AekitError for an unreadable file, unknown names (listing the known ones) or values of
    the wrong kind (the recipe's own checks).

    Example (recipe.yaml):
        filters: [32, 64, 128]
        latent_dim: 64
        epochs: 40
        val_split: 0.2
    """
    path = Path(path)
    if path.suffix.lower() not in RECIPE_SUFFIXES:
        raise AekitError(f"--config {path}: expected a {', '.join(RECIPE_SUFFIXES)} file of recipe settings.")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            import json

            data = json.loads(text)
        elif path.suffix.lower() == ".toml":
            if training_python_problem():
                raise AekitError(training_python_problem())
            import tomllib  # novermin (Python 3.11+, like the rest of the training side: aekit.lazy.TRAINING_PYTHON)

            data = tomllib.loads(text)
        else:
            from aekit.lazy import yaml

            data = yaml.safe_load(text)
    except AekitError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise AekitError(f"--config {path} cannot be read: {exc}. Check the path.") from None
    except Exception as exc:  # the parsers' own errors (yaml.YAMLError, json/toml decode errors)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise AekitError(f"--config {path} is not valid {path.suffix[1:].upper()} ({first}). Fix the file.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AekitError(f"--config {path} holds a {type(data).__name__}; expected a mapping of recipe settings (name: value).")
    known = {f.name for f in fields(TrainConfig)}
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        verb = "is not a recipe setting" if len(unknown) == 1 else "are not recipe settings"
        raise AekitError(f"--config {path}: {', '.join(unknown)} {verb}. Known: {', '.join(sorted(known))}.")
    if isinstance(values.get("filters"), list):
        values["filters"] = tuple(values["filters"])
    try:
        TrainConfig(**values).validate()
    except TypeError as exc:
        raise AekitError(f"--config {path}: {exc}.") from None
    except AekitError as exc:
        raise AekitError(f"--config {path}: {exc}") from None
    return values


def recipe_text(config: TrainConfig) -> str:
    """A recipe as YAML that `--config` reads back (None: chosen for the devices when training starts)."""
    lines = []
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if isinstance(value, tuple):
            value = list(value)
        if value is None:
            shown = "null"
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, str):
            shown = json_string(value)
        elif isinstance(value, list):
            shown = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            shown = repr(value)
        lines.append(f"{f.name}: {shown}")
    return "\n".join(lines) + "\n"


def json_string(text: str) -> str:
    import json

    return json.dumps(text)


def default_learning_rate(batch: int) -> float:
    """The square-root scaling rule from the rate tuned at CPU_BATCH (unclipped; resolve() clips it)."""
    return BASE_LEARNING_RATE * math.sqrt(batch / CPU_BATCH)


def read_config(run_dir: Path) -> dict:
    """A run's config.json, checked for the shape every reader relies on (one-line AekitError if not)."""
    path = Path(run_dir) / runs.CONFIG
    record = runs.read_json(path, object)  # its shape is checked below, with what is wrong
    problems = []
    if not isinstance(record, dict):
        problems.append(f"expected a JSON object, found {type(record).__name__}")
    else:
        for key in ("recipe", "model", "data"):
            if not isinstance(record.get(key), dict):
                problems.append(f"no {key} object")
        if isinstance(record.get("recipe"), dict):
            try:
                TrainConfig.from_json(record["recipe"]).validate()
            except (TypeError, ValueError, AekitError) as exc:
                problems.append(f"recipe: {str(exc)[:120]}")
    if problems:
        raise AekitError(f"{path} is not an aekit run config ({'; '.join(problems)}). Train into a new --output folder.")
    return record


def dataset_identity(record: dict) -> str:
    """The `--dataset` value that loads exactly the data described by a run's `data` record."""
    if record.get("packed"):
        return record["packed"]
    source = record["source"]
    return source.removeprefix("tfds:") if record.get("kind") == "tfds" else source


def prepare_resume(run_dir: Path, requested: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The config to continue `run_dir` with: the stored recipe, with `epochs` and device options from the request.

    Raises AekitError if an explicitly requested setting in FIXED_ON_RESUME
    differs from the stored one, since the checkpoint would not match it.
    """
    record = read_config(run_dir)
    stored = TrainConfig.from_json(record["recipe"])
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
    for name in (
        "epochs",
        "gpus",
        "cpu_replicas",
        "batch_size",
        "learning_rate",
        "warmup_steps",
        "data_dir",
        "checkpoint_steps",
        "worker_timeout",
        "steps_per_execution",
    ):
        if name in explicit:
            setattr(resumed, name, getattr(requested, name))
    return resumed


def plan_run(
    requested: TrainConfig, explicit: set[str], resume: Path | None = None, output: Path | None = None, name: str | None = None
) -> tuple[Path, TrainConfig]:
    """Which folder a `train` call uses, and the config it trains with.

    Args:
        requested: the options given, on top of the default recipe.
        explicit: the names of the options the user gave.
        resume, output, name: --resume RUN, --output FOLDER, --name NAME (runs/NAME).

    Returns:
        (run folder, config): a new folder with `requested`, or an existing run folder with its
        stored recipe (see prepare_resume) so that training continues where it stopped.
    """
    requested.validate()  # every option checked before anything is read or written
    if resume is not None and output is not None and Path(resume).resolve() != Path(output).resolve():
        raise AekitError("--resume and --output name different folders. Pass only --resume RUN to continue a run.")
    if os.environ.get("TF_CONFIG") and not (resume or output or name):
        raise AekitError(
            "Multi-worker training needs the run folder named: pass --output /shared/runs/<name> (the same on "
            "every worker, on storage they all see) so that every worker and a restart use one folder."
        )
    run_dir = Path(resume or output or runs.new_run_dir(name=name))
    if run_dir.exists() and not run_dir.is_dir():
        raise AekitError(f"--output {run_dir} is a file, not a folder. Pick a folder name for the run.")
    if resume is not None and not runs.is_run_dir(run_dir):
        raise AekitError(f"--resume {resume}: no {runs.CONFIG} there, so it is not an aekit run folder. Check the path.")
    foreign = [] if runs.is_run_dir(run_dir) else runs.foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise AekitError(
            f"--output {run_dir} already holds files that are not an aekit run ({shown}); aekit will not write over "
            "them. Pass a new or empty folder."
        )
    if runs.is_run_dir(run_dir):
        return run_dir, prepare_resume(run_dir, requested, explicit)
    return run_dir, requested
