#!/usr/bin/env bash
# The edge install on aarch64, under qemu-user, against this x86-64 machine's outputs.
#
#   bash benchmarks/aarch64_check.sh [EXPORT_DIR]        # EXPORT_DIR: an `aekit export` folder; default: a tiny new one
#   bash benchmarks/aarch64_check.sh --install [...]     # first install qemu-user 10 (bookworm-backports) and mmdebstrap
#
# What it does, all from the package registries:
#   1. finds qemu-user >= 8 (Debian 12's own qemu 7.2 segfaults in `import onnxruntime`; bookworm-backports has
#      qemu 10: apt-get install -t bookworm-backports qemu-user-static);
#   2. makes a Debian 12 arm64 root with Python 3.11 (mmdebstrap --variant=extract: unpacked, nothing run in it);
#   3. installs aekit[edge] for aarch64 beside it from PyPI's aarch64 wheels, at the x86 edge install's versions
#      (pip --platform manylinux_2_36_aarch64 --target: numpy, Pillow, onnxruntime, LiteRT; no TensorFlow);
#   4. runs every float32 and int8 file of the export on 256 bundled digits with x86-64's edge install, then with
#      the aarch64 one under each CPU model in AARCH64_CPUS, plus `aekit info` and an int8 encode/decode round
#      trip through the CLI, and compares: int8 files bit-identical, float32 files within 1e-4 (absolute).
# Emulated speed means nothing here and is not reported; agreement is the result. It exits 1 when any output
# disagrees. Needs `make install` and `make install-edge` first (the x86 side, and TensorFlow for the export).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${AARCH64_WORK:-$REPO/build/aarch64}          # the arm64 root, the aarch64 packages and the outputs
CPUS=${AARCH64_CPUS:-cortex-a72 cortex-a76 neoverse-n2}   # Armv8.0, Armv8.2 and Armv9.0 (SVE2) cores
SUITE=bookworm                                      # Debian 12: Python 3.11, glibc 2.36
PYVER=3.11
MIRROR=${AARCH64_MIRROR:-http://deb.debian.org/debian}
FULL=$REPO/.venv/bin
EDGE=$REPO/.venv-edge/bin
OUTPUTS=$REPO/benchmarks/aarch64_outputs.py

say() { printf 'aarch64-check: %s\n' "$*"; }
fail() { printf 'aarch64-check: error: %s\n' "$*" >&2; exit 2; }

INSTALL=0
if [[ ${1:-} == --install ]]; then INSTALL=1; shift; fi
EXPORT=${1:-}

install_tools() {
  [[ $(id -u) == 0 ]] || fail "--install needs root (apt-get)."
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
      "$MIRROR" /usr/share/keyrings/debian-archive-keyring.gpg > /etc/apt/sources.list.d/bookworm-backports.sources
  fi
  apt-get update -q
  apt-get install -y -q -t bookworm-backports qemu-user-static
  apt-get install -y -q mmdebstrap
}
[[ $INSTALL == 1 ]] && install_tools

# 1. qemu-user >= 8
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
[[ -n $QEMU ]] || fail "qemu-user is not installed. On Debian 12: bash $0 --install (qemu-user-static from bookworm-backports)."
QEMU_VERSION=$("$QEMU" --version | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1)
(( ${QEMU_VERSION%%.*} >= 8 )) || fail "$QEMU is qemu $QEMU_VERSION; onnxruntime needs qemu-user 8 or later under emulation \
(7.x segfaults in import onnxruntime). On Debian 12: apt-get install -t bookworm-backports qemu-user-static."
MODELS=$("$QEMU" -cpu help || true)  # it lists them, then exits 1
for cpu in $CPUS; do
  grep -qw -- "$cpu" <<< "$MODELS" || fail "qemu $QEMU_VERSION has no CPU model $cpu (AARCH64_CPUS)."
done
[[ -x $EDGE/python && -x $FULL/python ]] || fail "No .venv and .venv-edge here: run make install install-edge first."
say "qemu $QEMU_VERSION ($QEMU); CPU models: $CPUS"

# 2. a Debian arm64 root with Python (only unpacked: the aarch64 python runs from it through qemu -L)
ROOT=$WORK/root
if [[ ! -x $ROOT/usr/bin/python$PYVER ]]; then
  command -v mmdebstrap > /dev/null || fail "mmdebstrap is not installed: apt-get install mmdebstrap (or bash $0 --install)."
  rm -rf "$ROOT"
  mkdir -p "$WORK"
  say "making a Debian $SUITE arm64 root with Python $PYVER in $ROOT"
  mmdebstrap --quiet --variant=extract --arch=arm64 \
    --include=python$PYVER-minimal,libpython$PYVER-stdlib,libstdc++6,libgcc-s1,zlib1g "$SUITE" "$ROOT" "$MIRROR"
fi
# Run from $WORK, so that `-m aekit.cli` finds the installed aekit and not the source tree's.
arm_python() { (cd "$WORK" && QEMU_CPU=$1 PYTHONPATH=$WORK/site "$QEMU" -L "$ROOT" "$ROOT/usr/bin/python$PYVER" -s "${@:2}"); }

# 3. aekit[edge] for aarch64, from its wheel and PyPI's aarch64 wheels, pinned to the x86 edge install's versions
SITE=$WORK/site
if [[ ! -f $SITE/.installed || $REPO/pyproject.toml -nt $SITE/.installed || -n $(find "$REPO/aekit" "$REPO/cli" -newer "$SITE/.installed" -name '*.py' | head -1) ]]; then
  rm -rf "$SITE" "$WORK/wheel" "$WORK/src"
  mkdir -p "$WORK/src" "$WORK/wheel"
  (cd "$REPO" && tar cf - --exclude=__pycache__ pyproject.toml README.md aekit cli) | tar xf - -C "$WORK/src"
  "$FULL/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/wheel" "$WORK/src" > "$WORK/pip.log" 2>&1 ||
    { cat "$WORK/pip.log"; fail "building aekit's wheel failed (above)."; }
  "$EDGE/python" -m pip freeze --exclude-editable > "$WORK/constraints.txt"
  platforms=()
  for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
  say "installing aekit[edge] for aarch64 (Python $PYVER) into $SITE"
  "$FULL/python" -m pip install --quiet --target "$SITE" --only-binary=:all: --implementation cp \
    --python-version "$PYVER" "${platforms[@]}" --platform manylinux2014_aarch64 \
    --constraint "$WORK/constraints.txt" "$(ls "$WORK"/wheel/aekit-*.whl)[edge]" >> "$WORK/pip.log" 2>&1 ||
    { cat "$WORK/pip.log"; fail "pip could not install aekit[edge] for aarch64 (above)."; }
  [[ -z $(find "$SITE" -maxdepth 1 -iname 'tensorflow*') ]] || fail "TensorFlow was installed into the aarch64 edge site."
  touch "$SITE/.installed"
fi

# 4. an export: the given folder, or a tiny one trained here (1 epoch on the bundled digits), float32 and int8
if [[ -z $EXPORT ]]; then
  EXPORT=$WORK/run/export
  if [[ ! -f $EXPORT/manifest.json ]]; then
    rm -rf "$WORK/run"
    say "training and exporting a tiny model (float32 and int8, ONNX and TFLite) into $WORK/run"
    AEKIT_OFFLINE=1 "$FULL/aekit" train --dataset "$REPO/aekit/sample" --epochs 1 --filters 8,16 --latent-dim 8 -o "$WORK/run" --quiet
    "$FULL/aekit" export --run "$WORK/run" --format onnx,tflite > /dev/null
    "$FULL/aekit" export --run "$WORK/run" --format onnx,tflite --quantize int8 > /dev/null
  fi
fi
[[ -f $EXPORT/manifest.json ]] || fail "$EXPORT has no manifest.json: pass a folder written by aekit export."
first_of() { for name in "$@"; do [[ -f $EXPORT/$name ]] && { echo "$name"; return; }; done; }
INT8_ENCODER=$(first_of encoder_int8.tflite encoder_int8.onnx)   # the deployment pick: LiteRT int8 encoder ...
INT8_DECODER=$(first_of decoder_int8.onnx decoder_int8.tflite)   # ... and the onnxruntime decoder

OUT=$WORK/outputs
rm -rf "$OUT"
mkdir -p "$OUT"
"$EDGE/python" -c "
import gzip, numpy as np
raw = gzip.open('$REPO/aekit/sample/mnist-sample-images-idx3-ubyte.gz').read()
np.save('$OUT/images.npy', np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)[:256])"

cli_round_trip() {  # label, then the command that runs python
  local label=$1; shift
  [[ -n $INT8_ENCODER && -n $INT8_DECODER ]] || return 0
  { "$@" -m aekit.cli encode --model "$EXPORT/$INT8_ENCODER" "$OUT/images.npy" -o "$OUT/codes-$label.npz" --latent-dtype int8 --threads 1 &&
    "$@" -m aekit.cli decode --model "$EXPORT/$INT8_DECODER" "$OUT/codes-$label.npz" -o "$OUT/images-$label.npz" --format npz --threads 1
  } > "$OUT/cli-$label.log" 2>&1 || { cat "$OUT/cli-$label.log"; fail "aekit encode/decode failed on $label (above)."; }
  grep -h '^\(Encoded\|Decoded\)' "$OUT/cli-$label.log" | sed 's/^/  /'
}

say "x86-64: every exported file, then the CLI's int8 round trip ($INT8_ENCODER -> $INT8_DECODER)"
"$EDGE/python" "$OUTPUTS" run "$EXPORT" "$OUT/images.npy" "$OUT/x86_64.npz"
cli_round_trip x86_64 "$EDGE/python"
! "$EDGE/python" -c "import tensorflow" 2> /dev/null || fail "the x86 edge install has TensorFlow."

status=0
for cpu in $CPUS; do
  say "aarch64 under qemu -cpu $cpu (minutes: emulation)"
  arm_python "$cpu" -m aekit.cli info --json > "$OUT/info-$cpu.json"
  "$EDGE/python" -c "
import json; f = json.load(open('$OUT/info-$cpu.json'))
print(f\"aarch64-check: aekit info: {f['machine']}, {f['libc']}, Python {f['python']}, install {f['install']}, \"
      f\"onnxruntime {f['packages'].get('onnxruntime')}, LiteRT {f['packages'].get('ai-edge-litert')}\")
assert f['machine'] == 'aarch64' and f['install'] == 'edge', f"
  arm_python "$cpu" "$OUTPUTS" run "$EXPORT" "$OUT/images.npy" "$OUT/aarch64-$cpu.npz" --latents "$OUT/x86_64.npz"
  cli_round_trip "aarch64-$cpu" arm_python "$cpu"
done

say "agreement with x86-64 (exported files; int8 bit-identical, float32 within 1e-4)"
emulated() { for cpu in $CPUS; do echo "$OUT/$1aarch64-$cpu.npz"; done; }
mapfile -t runs < <(emulated "")
"$EDGE/python" "$OUTPUTS" compare "$OUT/x86_64.npz" "${runs[@]}" || status=1
if [[ -n $INT8_ENCODER && -n $INT8_DECODER ]]; then
  for stage in codes images; do
    say "agreement with x86-64 (aekit encode/decode, int8 files: $stage bit-identical)"
    mapfile -t runs < <(emulated "$stage-")
    "$EDGE/python" "$OUTPUTS" compare --exact "$OUT/$stage-x86_64.npz" "${runs[@]}" || status=1
  done
fi
exit $status
