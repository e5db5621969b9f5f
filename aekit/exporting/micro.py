"""tflite-micro deliverables: the int8 batch-1 .tflite run by tflite-micro itself, and its C array sources.

`aekit export --format tflm` writes `<role>_tflm.tflite` and, beside it, `<role>_tflm.cc` holding the file as
an aligned `const unsigned char` array with its length (tflite-micro's examples' convention) and
`<role>_tflm.h` declaring them with the tensor arena size tflite-micro's interpreter measured and the ops a
build registers in its MicroMutableOpResolver.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aekit.edge.runtimes import as_file_input, dequantize, quantize
from aekit.errors import AekitError
from aekit.quiet import quiet_native_output as _quiet

RUNTIME = "tflite-micro"
ARENA_ALIGNMENT = 16  # the header's arena constant is the measured size rounded up to this
ARRAY_ALIGNMENT = 16  # alignas() of the model array: the flatbuffer's own alignment needs at most this
BYTES_PER_LINE = 12  # as xxd -i writes


def _interpreter(content: bytes, arena_size: int):
    from tflite_micro import runtime  # an attribute of the package, not an importable submodule

    return runtime.Interpreter.from_bytes(content, arena_size=arena_size)


def _detail(details: dict) -> dict:
    """tflite-micro's tensor details in LiteRT's form ("quantization": (scale, zero_point)) for quantize()."""
    params = details.get("quantization_parameters") or {}
    scales, zeros = params.get("scales"), params.get("zero_points")
    scale = float(scales[0]) if scales is not None and len(scales) else 0.0
    zero = int(zeros[0]) if zeros is not None and len(zeros) else 0
    return {"dtype": details["dtype"], "shape": details["shape"], "quantization": (scale, zero)}


class MicroRunner:
    """tflite-micro's Python interpreter over one batch-1 .tflite file (its reference kernels, as on a device)."""

    runtime = RUNTIME
    device = "cpu"
    providers = ["tflite-micro/CPU"]

    def __init__(self, path: Path, content: bytes | None = None, arena_size: int | None = None):
        self.path = Path(path)
        self.content = content if content is not None else self.path.read_bytes()
        self.arena_size = arena_size or measure_arena(self.content)
        try:
            with _quiet():  # tflite-micro reports allocation failures on stderr
                self.interpreter = _interpreter(self.content, self.arena_size)
        except (RuntimeError, ValueError) as exc:
            raise AekitError(f"tflite-micro cannot load {self.path}: {str(exc).splitlines()[0][:300]}. Re-export it.") from None
        self.input = _detail(self.interpreter.get_input_details(0))
        self.output = _detail(self.interpreter.get_output_details(0))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One input at a time (the file's batch is 1); float32 in, float32 out, quantized as the file asks."""
        outputs = []
        for one in np.asarray(batch, np.float32):
            try:
                self.interpreter.set_input(quantize(as_file_input(one[None], self.input["shape"]), self.input), 0)
                self.interpreter.invoke()
            except (RuntimeError, ValueError) as exc:
                raise AekitError(f"tflite-micro cannot run {self.path}: {str(exc).splitlines()[0][:300]}.") from None
            outputs.append(dequantize(np.asarray(self.interpreter.get_output(0)), self.output))
        return np.concatenate(outputs)


def choice_runner(path: Path) -> MicroRunner:
    """A MicroRunner for int8.choose's candidates: an arena ample for any of them (1 MiB, or 16x the file), not measured."""
    content = Path(path).read_bytes()
    return MicroRunner(path, content, max(1 << 20, 16 * len(content)))


def measure_arena(content: bytes, limit: int | None = None) -> int:
    """The smallest tensor arena (bytes) tflite-micro allocates this model in and runs it, found by bisection.

    Measured by this machine's tflite-micro (a 64-bit build); a 32-bit target's per-tensor records hold
    smaller pointers, so it typically needs less.
    """
    limit = limit or max(1 << 16, 16 * len(content))

    def fits(size: int) -> bool:
        try:
            with _quiet():
                interpreter = _interpreter(content, size)
                details = _detail(interpreter.get_input_details(0))
                interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
                interpreter.invoke()
            return True
        except (RuntimeError, ValueError):
            return False

    if not fits(limit):
        raise AekitError(f"tflite-micro cannot allocate this model in {limit:,} bytes of arena: too large for a microcontroller.")
    low, high = 0, limit  # low does not fit (or is 0), high fits
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def op_names(content: bytes) -> list[str]:
    """The file's builtin ops, sorted and each once (what a microcontroller build must register)."""
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        interpreter = Interpreter(model_content=content)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def resolver_call(op: str) -> str:
    """MicroMutableOpResolver's method for a builtin op: CONV_2D -> AddConv2D, L2_POOL_2D -> AddL2Pool2D."""
    return "Add" + "".join(part if any(c.isdigit() for c in part) else part.capitalize() for part in op.split("_"))


def c_names(stem: str) -> dict[str, str]:
    """The C names for a file stem (encoder_tflm): the array, its length, the arena and op-count constants, the guard."""
    camel = "".join(part.capitalize() for part in stem.split("_"))
    return {
        "array": f"g_{stem}_model",
        "length": f"g_{stem}_model_len",
        "arena": f"k{camel}TensorArenaSize",
        "op_count": f"k{camel}OpCount",
        "register": f"{stem.upper()}_REGISTER_OPS",
        "guard": f"AEKIT_{stem.upper()}_H_",
    }


def write_sources(content: bytes, stem: str, source: Path, header: Path, arena_bytes: int, ops: list[str], about: str) -> dict:
    """Writes `source` (.cc) and `header` (.h) for a .tflite file; returns the names and constants they hold.

    Args:
        content: the .tflite file's bytes (the array).
        stem: the file's name without .tflite (encoder_tflm): the sources are `stem`.cc and `stem`.h, the
            C names derive from it (c_names).
        source, header: where to write them (staged names; the .cc includes "`stem`.h").
        arena_bytes: the measured tensor arena; the header's constant rounds it up to ARENA_ALIGNMENT.
        ops: the builtin ops the model uses (op_names).
        about: one line on what the model takes and gives, for the header's comment.
    """
    names = c_names(stem)
    arena = -(-arena_bytes // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
    lines = [", ".join(f"0x{b:02x}" for b in content[i : i + BYTES_PER_LINE]) for i in range(0, len(content), BYTES_PER_LINE)]
    calls = [resolver_call(op) for op in ops]
    header_name = f"{stem}.h"
    Path(header).write_text(
        f"// {header_name}: {stem}.tflite as a C array for tflite-micro, written by aekit export --format tflm.\n"
        f"// {about}\n"
        f"#ifndef {names['guard']}\n#define {names['guard']}\n\n"
        f"extern const unsigned char {names['array']}[];\n"
        f"extern const int {names['length']};\n\n"
        f"// The smallest tensor arena tflite-micro's interpreter ran the model in ({arena_bytes} bytes, measured on a\n"
        f"// 64-bit host), rounded up to {ARENA_ALIGNMENT}: alignas({ARENA_ALIGNMENT}) uint8_t arena[{names['arena']}];\n"
        f"constexpr int {names['arena']} = {arena};\n\n"
        f"// The ops to register: tflite::MicroMutableOpResolver<{names['op_count']}> resolver;\n"
        f"// {names['register']}(resolver);\n"
        f"constexpr int {names['op_count']} = {len(calls)};\n"
        f"#define {names['register']}(resolver) \\\n" + " \\\n".join(f"  (resolver).{call}();" for call in calls) + "\n\n"
        f"#endif  // {names['guard']}\n"
    )
    Path(source).write_text(
        f'#include "{header_name}"\n\n'
        f"alignas({ARRAY_ALIGNMENT}) const unsigned char {names['array']}[] = {{\n"
        + ",\n".join(f"  {line}" for line in lines)
        + "\n};\n"
        f"const int {names['length']} = {len(content)};\n"
    )
    return {**names, "arena_bytes": arena_bytes, "arena_constant": arena, "ops": ops, "resolver_calls": calls}


def entry_sources(content: bytes, entry, staged: dict, arena_bytes: int) -> dict:
    """Writes a tflm entry's .cc and .h (to `staged`: {final name: path}); returns its manifest `micro` record.

    The record: the C names and constants (write_sources), the ops, and each source's bytes and sha256 under
    its final name.
    """
    from aekit.core.manifest import sha256_of

    source, header = staged
    about = "; ".join(
        f"{what} {t.name} {t.shape} {t.dtype}" + (f" (real = {t.scale:.6g} * (q - {t.zero_point}))" if t.scale else "")
        for what, tensors in (("input", entry.inputs), ("output", entry.outputs))
        for t in tensors
    )
    stem = entry.file.removesuffix(".tflite")
    names = write_sources(content, stem, staged[source], staged[header], arena_bytes, op_names(content), about)
    files = {name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)} for name, path in staged.items()}
    return {**names, "arena_measured_by": f"{RUNTIME} Python interpreter (64-bit host)", "files": files}
