"""`aekit data`: prepare datasets; `aekit data pack SOURCE OUT` packs a source into TFRecord shards.

Registered in cli/main.py with `app.add_typer(data_app, name="data")`. The library side is
`aekit.data.pack`; this module turns options into a `pack` call and its result into a summary.
"""

from __future__ import annotations

import shlex
import time
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from aekit.cli.app import user_errors
from aekit.data.pack.schema import AUTO_PARALLEL_IMAGES, DEFAULT_SHARD_SIZE

data_app = typer.Typer(
    help="Prepare datasets: pack a source into TFRecord shards for streaming.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@data_app.callback()
def _data() -> None:
    """Prepare datasets: pack a source into TFRecord shards for streaming."""


@data_app.command()
@user_errors
def pack(
    source: Annotated[
        str,
        typer.Argument(
            help="What `aekit train --dataset` takes: a TFDS name, a folder of IDX files or images, a .npz/.npy file."
        ),
    ],
    out: Annotated[
        str, typer.Argument(help="Folder for the shards and dataset.json: new or empty, or an earlier pack to resume.")
    ],
    val_split: Annotated[
        float,
        typer.Option(
            help="For single-split sources: the fraction held out for validation, a seeded random draw "
            "(stratified over an image folder's sub-folders)."
        ),
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the validation draw (train's --seed, to split as train would).")] = 0,
    val_from_end: Annotated[
        bool, typer.Option("--val-from-end", help="Hold out the LAST --val-split instead (data ordered on purpose).")
    ] = False,
    pixel_max: Annotated[
        Optional[float], typer.Option(help="The value of white when pixels are not 0-255 or 0-1 (e.g. 16, 4095).")
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Images per shard file.")] = DEFAULT_SHARD_SIZE,
    workers: Annotated[
        int,
        typer.Option(help=f"Processes decoding an image folder (0: one per core for {AUTO_PARALLEL_IMAGES:,}+ images, else 1)."),
    ] = 0,
    data_dir: Annotated[Optional[str], typer.Option(help="TFDS data directory (TFDS's default when unset).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
):
    """Pack a source once into uint8 TFRecord shards; train from them with `aekit train --dataset OUT`.

    Running the same command again continues an interrupted pack and repairs missing or corrupt shards.
    """
    from aekit.cli.render import err_console, out_console
    from aekit.data.pack.writer import pack as pack_source

    progress = None
    if not quiet:
        progress = Progress(
            TextColumn("packing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        )
    task, started, first_done = None, time.perf_counter(), None

    def on_progress(done: int, total: int) -> None:
        nonlocal task, first_done, started
        if progress is None:
            return
        if task is None:  # the source is read and the kept shards checked: writing starts
            progress.start()
            task, first_done, started = (
                progress.add_task("packing", total=total, completed=done, rate=""),
                done,
                time.perf_counter(),
            )
        seconds = time.perf_counter() - started
        rate = f"{(done - first_done) / seconds:,.0f} images/s" if seconds > 0 and done > first_done else ""
        progress.update(task, completed=done, rate=rate)

    try:
        result = pack_source(
            source,
            out,
            val_split=val_split,
            data_dir=data_dir,
            shard_size=shard_size,
            workers=workers,
            on_progress=on_progress,
            seed=seed,
            val_from_end=val_from_end,
            pixel_max=pixel_max,
        )
    except KeyboardInterrupt:
        if task is not None:
            progress.stop()
        err_console.print(
            "[yellow]interrupted[/]: finished shards are kept; run the same command again to continue.", highlight=False
        )
        raise typer.Exit(130) from None
    finally:
        if task is not None:
            progress.stop()
    render_pack(out_console, result)


def render_pack(console, result) -> None:
    """The summary of a pack: images and shards per split, size, speed, and how to train from it."""
    m = result.manifest
    folder = result.folder
    if result.already_packed:
        console.print(
            f"{escape(m.source)} is already packed in [bold]{escape(folder)}[/] (every shard checked against its sha256); "
            "nothing to do.",
            highlight=False,
        )
    table = Table(title=f"Packed {m.source} → {folder}", show_header=True, title_justify="left")
    for column, justify in (("split", "left"), ("images", "right"), ("shards", "right"), ("size", "right")):
        table.add_column(column, justify=justify)
    for split in ("train", "val"):
        records = m.splits[split]
        size = sum(r.bytes for r in records)
        table.add_row(split, f"{m.count(split):,}", str(len(records)), _megabytes(size))
    console.print(table)
    shape = "x".join(map(str, m.image_shape))
    details = [f"{shape} uint8 ({m.stored_as} from {m.source_dtype})", f"validation = {m.validation}"]
    if not result.already_packed:
        speed = f"{result.written_images:,} images in {result.seconds:.1f} s = {result.images_per_sec:,.0f} images/s"
        if result.workers > 1:
            speed += f" with {result.workers} decoding processes"
        details.append(speed)
        if result.kept_shards:
            details.append(f"resumed: kept {result.kept_shards} finished shard(s), wrote {result.written_shards}")
    if m.note:
        details.append(f"note: {m.note}")
    console.print("\n".join(f"  {escape(line)}" for line in details), highlight=False)
    console.print(f"Identity {m.identity[:16]}…  Train from it:", highlight=False)
    console.print(f"  aekit train --dataset {shlex.quote(folder)}", highlight=False, markup=False, soft_wrap=True)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size / 1e6:.3f} MB"


@data_app.command()
@user_errors
def check(
    folder: Annotated[str, typer.Argument(help="A folder made by aekit data pack.")],
    fast: Annotated[
        bool, typer.Option("--fast", help="Check shard sizes and first records only, not their sha256 and every record.")
    ] = False,
):
    """Check a pack: every shard present with the size and sha256 dataset.json lists, holding the images it counts."""
    from aekit.cli.render import out_console
    from aekit.data.pack.reader import PackedDataset

    data = PackedDataset.open(folder, verify=not fast)
    if not fast:
        data.check_records()
    m = data.manifest
    shards = sum(len(records) for records in m.splits.values())
    out_console.print(
        f"{escape(data.folder)}: {data.counts['train']:,} train / {data.counts['val']:,} val images "
        f"{'x'.join(map(str, data.image_shape))} uint8 from {escape(m.source)}; {shards} shards "
        f"{'present with their sizes' if fast else 'match their sha256 and hold those images'}; identity {data.identity[:16]}…",
        highlight=False,
        soft_wrap=True,
    )
