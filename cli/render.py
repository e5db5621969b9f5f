"""Rich rendering for the CLI: training progress, summaries, tables.

Progress and notices go to stderr, results to stdout, so `--json` output and
shell pipes stay clean.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from aekit.benchmarking.quality import SSIM_WINDOW
from aekit.core import runs
from aekit.training.loop import TrainCallback, TrainResult

out_console = Console()
err_console = Console(stderr=True)


def aekit_command() -> str:
    """How the user can type aekit again, for "Next:" hints: `aekit` when that is on PATH, else the path invoked.

    After `make install` the command is .venv/bin/aekit, not on PATH: the hint then shows
    `.venv/bin/aekit` (as typed, when argv[0] has a slash) or the resolved path. Anything that is not
    an aekit entry point (pytest, python -m) gets plain `aekit`.
    """
    invoked = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(invoked).name not in ("aekit", "aekit.exe"):
        return "aekit"
    try:
        found = shutil.which(invoked) if "/" not in invoked else invoked
        running = Path(found or invoked).resolve()
        on_path = shutil.which("aekit")
        if on_path and Path(on_path).resolve() == running:
            return "aekit"
    except OSError:
        return "aekit"
    return shlex.quote(invoked if "/" in invoked else str(running))


def _next_steps(console: Console, steps: tuple[tuple[str, str], ...]) -> None:
    """ "Next:" and one aligned `command  # why` line per step; commands are left unmarked for copy and paste."""
    width = max(len(command) for command, _ in steps)
    console.print(
        "Next:\n" + "\n".join(f"  {command:<{width}}  # {why}" for command, why in steps),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


class TrainProgress(TrainCallback):
    """Epoch and step bars with the running loss and samples/s, then one line per epoch."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.epoch_task = self.step_task = None

    def on_train_begin(self, info: dict) -> None:
        data, placement = info["data"], info["placement"]
        verb = "Resuming" if (info["start_epoch"] or info.get("start_step")) else "Training"
        if placement["kind"] == "multi_worker":
            role = "chief (writes the run folder)" if info["is_chief"] else "worker (the chief writes the run folder)"
            self.console.print(f"[bold]{placement['task']}[/]: {role}", highlight=False)
        self.console.print(
            f"{verb} run [bold]{info['run_dir']}[/]" + (f" from epoch {info['start_epoch'] + 1}" if info["start_epoch"] else "")
        )
        self.console.print(
            f"  data: {data['source']} — {data['train_images']:,} train / {data['val_images']:,} val images "
            f"{'x'.join(map(str, data['image_shape']))} {data['stored_dtype']} ({data['pixel_scaling'].get('rule', '')}); "
            f"validation = {data['validation']}",
            highlight=False,
        )
        if data.get("note"):
            self.console.print(f"  [yellow]note:[/] {escape(data['note'])}", highlight=False)
        self.console.print(
            f"  devices: {placement['strategy']} × {placement['replicas']} replica(s) {placement['devices']}, "
            f"precision {placement['precision']}; global batch {info['global_batch_size']}, "
            f"{info['steps_per_epoch']} steps/epoch, {info['steps_per_call']} per call; {info['params']:,} parameters",
            highlight=False,
        )
        self.progress.start()
        self.epoch_task = self.progress.add_task("epochs", total=info["epochs"], completed=info["start_epoch"], stats="")

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        if self.step_task is not None:
            self.progress.remove_task(self.step_task)
        self.step_task = self.progress.add_task(f"epoch {epoch}", total=steps, stats="")

    def on_step_end(self, epoch: int, step: int, loss: float, samples_per_sec: float) -> None:
        self.progress.update(self.step_task, completed=step, stats=f"loss {loss:.5f}  {samples_per_sec:,.0f} samples/s")

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        self.progress.advance(self.epoch_task)
        self.progress.update(self.epoch_task, stats=f"val MSE {row['val_mse']:.5f}")
        self.progress.console.print(
            f"epoch {epoch:>3}  loss {row['train_loss']:.5f}  val MSE {row['val_mse']:.5f}  "
            f"val PSNR {row['val_psnr']:.2f} dB  {row['seconds']:.1f} s  {row['samples_per_sec']:,.0f} samples/s",
            highlight=False,
        )

    def on_train_end(self, result: TrainResult) -> None:
        self.progress.stop()


def render_train_summary(console: Console, result: TrainResult) -> None:
    m = result.metrics
    table = Table(title="Training summary", show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("epochs", str(m["epochs"]))
    table.add_row("final train loss", f"{m['final_train_loss']:.5f}")
    table.add_row("final val MSE", f"{m['final_val_mse']:.5f}")
    table.add_row("final val PSNR", f"{m['final_val_psnr']:.2f} dB")
    table.add_row("best val MSE", f"{m['best_val_mse']:.5f}")
    table.add_row("mean samples/s", f"{m['mean_samples_per_sec']:,.0f}")
    table.add_row("training time", f"{m['train_seconds']:.1f} s")
    table.add_row(
        "parameters",
        f"{m['params']['encoder']:,} encoder / {m['params']['decoder']:,} decoder / {m['params']['autoencoder']:,} total",
    )
    console.print(table)
    if result.wrote_files:
        run, aekit = shlex.quote(str(result.run_dir)), aekit_command()
        encoder = shlex.quote(str(result.run_dir / "export" / "encoder.onnx"))
        console.print(f"Run saved to [bold]{escape(str(result.run_dir))}[/]", highlight=False)
        _next_steps(
            console,
            (
                (f"{aekit} export --run {run} --format onnx", "ONNX encoder + decoder, checked against Keras"),
                (f"{aekit} bench --run {run}", "their speed and reconstruction quality"),
                (f"{aekit} encode --model {encoder} IMAGES -o codes.npz", "images to latent codes"),
                (f"tensorboard --logdir {shlex.quote(str(result.run_dir / runs.TENSORBOARD))}", "needs: pip install tensorboard"),
            ),
        )
    else:
        console.print("This worker is not the chief; the chief wrote the run folder.")


def render_info(console: Console, facts: dict) -> None:
    table = Table(title=f"aekit {facts['aekit']}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("install", "full (train, export, bench)" if facts["install"] == "full" else "edge (no TensorFlow)")
    table.add_row("python", facts["python"])
    table.add_row("platform", f"{facts['platform']} ({facts['machine']}, {facts['libc'] or 'C library unknown'})")
    table.add_row("cpu", f"{facts['cpu']} ({facts['cpu_count']} logical cores)")
    for name, version in facts["packages"].items():
        if version:
            table.add_row(name, version)
    gpus = facts["gpus"]
    if gpus is not None:
        table.add_row("TensorFlow built with CUDA", str(facts["tensorflow_built_with_cuda"]))
        table.add_row("GPUs visible to TensorFlow", ", ".join(f"{g['name']} ({g['model']})" for g in gpus) if gpus else "none")
    table.add_row("onnxruntime providers available", ", ".join(facts["onnxruntime_available_providers"]) or "none")
    console.print(table)
    if gpus is not None and not gpus and any("CUDA" in p for p in facts["onnxruntime_available_providers"]):
        console.print(
            "[yellow]note:[/] onnxruntime lists CUDA as available, but no GPU is visible: its sessions will run on CPU.",
            highlight=False,
        )


def _size(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.1f} MiB"


def _wide(console: Console) -> Console:
    """Files and pipes get room for every column of a wide table; terminals keep their width."""
    return console if console.is_terminal else Console(width=max(console.width, 190), file=console.file)


def render_export(console: Console, result) -> None:
    console = _wide(console)
    table = Table(title=f"Export of {result.run_dir} → {result.output}", title_justify="left")
    for column, justify in (
        ("file", "left"),
        ("format", "left"),
        ("precision", "left"),
        ("size", "right"),
        ("max abs diff", "right"),
        ("MSE Keras → export", "right"),
        ("PSNR drop", "right"),
        ("agreement", "right"),
        ("reference kernels", "right"),
        ("status", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column != "status")
    for e in result.entries:
        p, ref = e.parity, e.reference_parity
        status = "[green]passed[/]" if e.status == "passed" else f"[red]failed[/]: {escape(e.reason or '')}"
        kept = (e.quantization or {}).get("float_nodes")
        if kept and e.status == "passed":
            status += f" ({len(kept)} of {e.quantization['quantizable_nodes']} nodes float)"
        if e.static_batch is not None and e.status == "passed":
            status += f" (batch {e.static_batch}{', ' + e.form + ' form' if e.form else ''})"
        if e.micro and e.status == "passed":
            status += f" (+ {', '.join(e.micro['files'])}; arena {e.micro['arena_constant']:,} bytes)"
        table.add_row(
            e.file,
            e.format,
            e.precision,
            _size(e.bytes) if e.bytes else "-",
            f"{p.max_abs_diff:.1e}" if p else "-",
            f"{p.mse_keras:.5f} → {p.mse_export:.5f}" if p else "-",
            f"{p.psnr_drop_db:+.2f} dB" if p else "-",
            f"{p.agreement_db:.1f} dB ≥ {p.min_agreement_db:g}" if p else "-",
            f"{ref.agreement_db:.1f} dB ({ref.images} images)" if ref else "-",
            status,
        )
    console.print(table)
    for e in result.entries:
        report = (e.quantization or {}).get("sensitivity")
        if report:
            _render_sensitivity(console, e, report)
    for e in result.entries:
        note = (e.quantization or {}).get("note")
        if note and e.status == "passed":
            console.print(f"[bold yellow]note:[/] {e.file}: {escape(note)}.", highlight=False)
    console.print(export_outcome(result.entries), highlight=False)
    console.print(f"Manifest: {result.output / 'manifest.json'}", highlight=False)
    console.print(
        "agreement = PSNR of the file's reconstructions against Keras' (what the export adds); "
        "PSNR drop = against the original images.",
        style="dim",
        highlight=False,
    )
    passed = {e.file for e in result.entries if e.status == "passed"}
    if passed:
        aekit, run = aekit_command(), shlex.quote(str(result.run_dir))
        encoder = next((f for f in sorted(passed) if f.startswith("encoder")), None)
        steps = [(f"{aekit} bench --run {run}", "speed and reconstruction quality of the exports")]
        if encoder:
            model = shlex.quote(str(result.output / encoder))
            steps.append((f"{aekit} encode --model {model} IMAGES -o codes.npz", "images to latent codes"))
        _next_steps(console, tuple(steps))


def _render_sensitivity(console: Console, entry, report: dict) -> None:
    """One int8 file's per-node report: each node alone int8 (all others float), its agreement; float ones marked."""
    kept = {n["node"] for n in entry.quantization.get("float_nodes", [])}
    table = Table(
        title=f"{entry.file}: each node quantized alone ({report['kernels']} kernels, training images)", title_justify="left"
    )
    for column in ("node", "op", "agreement alone", "kept float"):
        table.add_column(column, justify="right" if column == "agreement alone" else "left", overflow="fold")
    for row in sorted(report["nodes"], key=lambda r: r["agreement_db"]):
        table.add_row(row["node"], row["op"], f"{row['agreement_db']:.1f} dB", "yes" if row["node"] in kept else "")
    console.print(table)


def export_outcome(entries) -> str:
    """What an export did, in words: which files it kept and which failed (an export writes nothing else)."""
    if not entries:
        return "Nothing was exported: the plan held no file. Pass --format and --parts, e.g. --format onnx."
    kept = [e.file for e in entries if e.status == "passed"]
    failed = [e.file for e in entries if e.status != "passed"]
    if not failed:
        return f"Exported {_count(kept, 'file')}, each checked against Keras: {', '.join(kept)}."
    if not kept:
        return f"No file was kept: {', '.join(failed)} failed (see status); nothing new was written but the manifest."
    return f"Exported {_count(kept, 'file')} ({', '.join(kept)}); {', '.join(failed)} failed and {_was(failed)} not kept."


FORMAT_NAMES = {"onnx": "ONNX", "tflite": "TFLite", "savedmodel": "SavedModel", "tflm": "tflite-micro"}


def export_notice(fmt: str, quantize: str, passed: list[str] | None = None, failed: list[str] | None = None) -> str:
    """An export that bench ran itself, in words: "the ONNX encoder and decoder in int8: kept encoder_int8.onnx; ...".

    `passed`/`failed`: the files it kept and the files that failed their check (unknown when None).
    """
    precision = "float32 (not quantized)" if quantize == "none" else f"{quantize} (quantized)"
    line = f"the {FORMAT_NAMES.get(fmt, fmt)} encoder and decoder in {precision}"
    if passed is None and failed is None:
        return line
    words = [f"kept {', '.join(passed)}" if passed else "kept no file"]
    if failed:
        words.append(f"{', '.join(failed)} failed {_its(failed)} check against Keras and {_was(failed)} not kept")
    return f"{line}: {'; '.join(words)}"


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _was(items: list) -> str:
    return "was" if len(items) == 1 else "were"


def _its(items: list) -> str:
    return "its" if len(items) == 1 else "their"


BENCH_ABSENT_NAMES = {"keras": "Keras baseline", "openvino": "OpenVINO", "bench.png": "bench.png"}


def render_bench(console: Console, result) -> None:
    h = result.header
    # The edge install has no TensorFlow to list GPUs with (None): its GPU is what onnxruntime reports per row.
    listed = h["gpus"]
    gpus = "GPUs not listed (no TensorFlow)" if listed is None else ", ".join(g.get("model") or g["name"] for g in listed)
    gpus = gpus or "no GPU"
    v = h["versions"]
    runtimes = [f"onnxruntime {v.get('onnxruntime-gpu') or v.get('onnxruntime')}", f"LiteRT {v.get('ai-edge-litert')}"]
    runtimes += [f"OpenVINO {v['openvino']}"] if v.get("openvino") else []
    runtimes += [f"TensorFlow {v['tensorflow']}" if v.get("tensorflow") else "no TensorFlow"]
    console.print(
        f"[bold]aekit bench[/] — run {h['run']}; {h['images']} images from {h['data']}\n"
        f"CPU {h['cpu']} ({h['cpu_count']} cores, {h['options']['threads']} threads); {gpus}; "
        f"{', '.join(runtimes)}; training val MSE "
        + (f"{h['train_val_mse']:.5f}" if h.get("train_val_mse") is not None else "not recorded"),
        highlight=False,
    )
    for what, why in (h.get("absent") or {}).items():  # once each: what was not benchmarked (or drawn), and why
        console.print(f"  {BENCH_ABSENT_NAMES.get(what, what)}: {escape(why)}", highlight=False, soft_wrap=True)
    if h.get("exported_now"):
        console.print("Nothing was exported, so bench exported first:", highlight=False)
    for key in h.get("exported_now") or []:
        fmt, quantize = key.split(":", 1)
        files = (h.get("exported_now_files") or {}).get(key, {})
        console.print(f"  {export_notice(fmt, quantize, files.get('passed'), files.get('failed'))}", highlight=False)
    quality = h.get("quality") or {}
    if quality.get("ssim_note"):
        console.print(f"  [yellow]note:[/] {escape(quality['ssim_note'])}", highlight=False)
    elif quality.get("ssim_window") and quality["ssim_window"] != SSIM_WINDOW:
        size, (height, width) = quality["ssim_window"], quality["image_size"]
        console.print(
            f"  note: SSIM with a {size}x{size} window, sigma {quality['ssim_sigma']:g} (images are {height}x{width} px, "
            f"smaller than the standard {SSIM_WINDOW}x{SSIM_WINDOW}): not comparable with SSIM of larger images",
            highlight=False,
        )
    console = _wide(console)
    table = Table(title_justify="left")
    for column, justify in (
        ("part", "left"),
        ("runtime", "left"),
        ("precision", "left"),
        ("ran on", "left"),
        ("batch", "right"),
        ("images/s", "right"),
        ("p50 ms", "right"),
        ("p90 ms", "right"),
        ("p99 ms", "right"),
        ("size", "right"),
        ("MSE", "right"),
        ("PSNR", "right"),
        ("SSIM", "right"),
        ("status", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column not in ("status",))
    last_part = None
    for r in result.rows:
        if last_part is not None and r.part != last_part:
            table.add_section()
        last_part = r.part
        ok = r.images_per_sec is not None
        status = {"passed": "[green]passed[/]", "failed": f"[red]failed[/]: {escape(r.reason or '')}"}.get(
            r.status, f"[yellow]{r.status}[/]"
        )
        if r.status != "failed" and r.quality_partner:
            partner = r.quality_partner.replace("keras", "Keras")
            status += f"; quality with {'the ' if partner.startswith('Keras') else ''}{escape(partner)}"
        if r.status != "failed" and r.agreement_db is not None:
            status += f"; agrees with onnxruntime to {r.agreement_db:.1f} dB"
        table.add_row(
            r.part,
            r.runtime,
            r.precision,
            r.provider.removesuffix("ExecutionProvider"),
            str(r.batch_size),
            f"{r.images_per_sec:,.0f}" if ok else "-",
            f"{r.latency_ms_p50:.3f}" if ok else "-",
            f"{r.latency_ms_p90:.3f}" if ok else "-",
            f"{r.latency_ms_p99:.3f}" if ok else "-",
            _size(r.file_bytes) if r.file_bytes else "-",
            f"{r.mse:.5f}" if r.mse is not None else "-",
            f"{r.psnr:.2f}" if r.psnr is not None else "-",
            f"{r.ssim:.4f}" if r.ssim is not None else "-",
            status,
        )
    console.print(table)
    best = max(
        (r for r in result.rows if r.part == "encoder" and r.status == "passed" and r.images_per_sec),
        key=lambda r: r.images_per_sec,
        default=None,
    )
    if best:
        console.print(
            f"Fastest encoder: {best.runtime} {best.precision} on {best.provider} at batch {best.batch_size}, "
            f"{best.images_per_sec:,.0f} images/s" + (f" (PSNR {best.psnr:.2f} dB)." if best.psnr is not None else "."),
            highlight=False,
        )
    if result.output:
        drawn = "bench.png" not in (h.get("absent") or {})
        console.print(f"Wrote {result.output}/bench.json, bench.csv" + (", bench.png" if drawn else ""), highlight=False)


@contextmanager
def counting_progress(console: Console, label: str, total: int | None):
    """A progress bar over images; yields a function to call with each batch's image count."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
