"""The parity check: an exported file run by its own runtime on real images, against the Keras model.

The rule and its numbers are in aekit.core.manifest.Parity; int8 files are also chosen (aekit.exporting.int8)
and checked here on the runtime's other kernel sets (aekit.edge.runtimes.KERNELS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aekit.core.manifest import Parity
from aekit.core.metrics import mse_per_image, psnr_from_mse
from aekit.edge.runtimes import open_runner, run_batched
from aekit.exporting import int8

# Float32 exports must also agree output for output, relative to the output's range
# (latents reach magnitudes of 10-50, images 1).
FLOAT32_MAX_REL_DIFF = 1e-5
# int8 files are also checked on the runtime's reference kernels (aekit.edge.runtimes.KERNELS), on this
# many of the parity images: reference int8 kernels take 20-60x the default's time.
REFERENCE_PARITY_IMAGES = 64


class _KerasReference:
    """Keras outputs on the parity images, computed once for all files."""

    def __init__(self, models: dict, images: np.ndarray):
        self.models = models
        self.images = images
        self.latents = _keras_predict(models["encoder"], images)
        self.reconstructions = _keras_predict(models["decoder"], self.latents)
        per_image = mse_per_image(images, self.reconstructions)
        self.mse = float(per_image.mean())
        self.psnr = float(psnr_from_mse(per_image).mean())

    def first(self, count: int) -> _KerasReference:
        """The same reference over its first `count` images, without running Keras again."""
        part = object.__new__(_KerasReference)
        part.models, part.images = self.models, self.images[:count]
        part.latents, part.reconstructions = self.latents[:count], self.reconstructions[:count]
        per_image = mse_per_image(part.images, part.reconstructions)
        part.mse, part.psnr = float(per_image.mean()), float(psnr_from_mse(per_image).mean())
        return part

    def inputs_for(self, role: str) -> np.ndarray:
        return self.latents if role == "decoder" else self.images

    def outputs_for(self, role: str) -> np.ndarray:
        return self.latents if role == "encoder" else self.reconstructions

    def reconstruct_with(self, role: str, outputs: np.ndarray) -> np.ndarray:
        """Images reconstructed when the exported part replaces its Keras counterpart."""
        return _keras_predict(self.models["decoder"], outputs) if role == "encoder" else outputs


class _Int8Checks:
    """What int8 files are chosen on (training images) and checked on with reference kernels (a few parity images)."""

    def __init__(self, models: dict, calibration: np.ndarray, parity: _KerasReference):
        self.selection = _KerasReference(models, calibration[: int8.SELECTION_IMAGES])
        self.reference = parity.first(REFERENCE_PARITY_IMAGES)

    def measure(self, role: str, bound: float, one_runner=None):
        """(A candidate file, kernel sets) -> its agreement on the selection images on each (int8.choose).

        `one_runner(path)`: a runtime of one kernel set (tflite-micro), whose one measurement stands for each.
        """

        def measure(path: Path, kernel_sets: tuple[str, ...], count: int | None = None) -> dict[str, float]:
            selection = self.selection if count is None else self.selection.first(count)
            inputs = selection.inputs_for(role)
            agreements = {}
            for kernels in kernel_sets[:1] if one_runner else kernel_sets:
                runner = one_runner(path) if one_runner else open_runner(path, "cpu", kernels=kernels)
                agreements[kernels] = _parity(selection, role, run_batched(runner, inputs), bound, "").agreement_db
            return dict.fromkeys(kernel_sets, agreements[kernel_sets[0]]) if one_runner else agreements

        return measure


def _keras_predict(model, inputs: np.ndarray) -> np.ndarray:
    from aekit.data.feeds import inference_batch

    batch = inference_batch(model.input.shape[1:], model.output.shape[1:])  # bounded activations for large images
    return np.concatenate([np.asarray(model(inputs[i : i + batch], training=False)) for i in range(0, len(inputs), batch)])


def _parity(
    reference: _KerasReference, role: str, outputs: np.ndarray, min_agreement_db: float, runtime: str, kernels: str = "default"
) -> Parity:
    expected = reference.outputs_for(role)
    reconstructions = reference.reconstruct_with(role, outputs)
    per_image = mse_per_image(reference.images, reconstructions)
    mse_export, psnr_export = float(per_image.mean()), float(psnr_from_mse(per_image).mean())
    max_abs = float(np.max(np.abs(outputs.astype(np.float64) - expected)))
    added = float(mse_per_image(reference.reconstructions, reconstructions).mean())  # what the export adds
    return Parity(
        images=len(reference.images),
        max_abs_diff=max_abs,
        max_rel_diff=max_abs / max(1.0, float(np.max(np.abs(expected)))),
        mse_keras=reference.mse,
        mse_export=mse_export,
        mse_delta=mse_export - reference.mse,
        psnr_keras=reference.psnr,
        psnr_export=psnr_export,
        psnr_drop_db=reference.psnr - psnr_export,
        agreement_db=float(psnr_from_mse(added)),
        min_agreement_db=min_agreement_db,
        runtime=runtime,
        kernels=kernels,
    )


def _parity_problem(parity: Parity, precision: str) -> str | None:
    if precision == "float32" and parity.max_rel_diff > FLOAT32_MAX_REL_DIFF:
        return (
            f"max abs diff {parity.max_abs_diff:.2e} is {parity.max_rel_diff:.1e} of the output range, "
            f"above {FLOAT32_MAX_REL_DIFF:g} for a float32 export"
        )
    if parity.agreement_db < parity.min_agreement_db:
        return (
            f"its reconstructions agree with Keras' to {parity.agreement_db:.1f} dB PSNR, below the "
            f"{parity.min_agreement_db:g} dB required (reconstruction MSE {parity.mse_keras:.5f} -> "
            f"{parity.mse_export:.5f}, PSNR drop {parity.psnr_drop_db:.2f} dB)"
        )
    return None
