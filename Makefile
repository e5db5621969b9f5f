# make install: .venv with aekit (editable) and the dev tools, from the package registries.
# make test: install if needed, then the test suite.  make demo: install, then a short training run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EDGE_VENV := .venv-edge
EDGE_STAMP := $(EDGE_VENV)/.installed
CHECK_DIR := .edge-check

.PHONY: install install-edge lint py310-check test edge-check demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[full,dev]'
	touch $(STAMP)

# The edge install: aekit without TensorFlow (onnxruntime CPU + LiteRT only).
install-edge: $(EDGE_STAMP)

$(EDGE_STAMP): pyproject.toml
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install -e '.[edge]'
	# The edge tests' own tools: pytest, and onnx to build small test models by hand (no TensorFlow).
	$(EDGE_VENV)/bin/python -m pip install 'pytest>=8.0' 'onnx>=1.16'
	touch $(EDGE_STAMP)

# The tests of the TensorFlow-free side, run where TensorFlow is not installed (their few TensorFlow tests skip).
EDGE_TESTS := tests/test_anomaly.py tests/test_lazy.py tests/test_sources.py tests/test_splits.py tests/test_pixels.py tests/test_checks.py tests/test_layout.py tests/test_bench_edge.py tests/test_openvino.py

# ruff: the linter and formatter configured in pyproject.toml. vermin: every module of aekit and its CLI
# (the `aekit` command loads them all, the edge commands included) keeps to Python 3.10's syntax and
# standard library, the edge side's oldest Python (requires-python; `# novermin` marks training-only lines).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vermin --quiet --no-tips --violations --eval-annotations --target=3.10- aekit cli

# A real Python 3.10 compiles every module: CPython 3.10.2 built for WebAssembly (Pyodide 0.22.1, from npm,
# cached in build/py310). It has none of aekit's dependencies, so it checks the syntax only; vermin the rest.
PY310_DIR := build/py310
define PY310_CHECK
const dir = process.argv[1];
require(dir + "/node_modules/pyodide/pyodide.js").loadPyodide({ indexURL: dir + "/node_modules/pyodide/" }).then((py) => {
  py.FS.mkdir("/src");
  py.FS.mount(py.FS.filesystems.NODEFS, { root: process.cwd() }, "/src");
  const failed = py.runPython(`
import pathlib, sys
files = sorted(p for top in ("aekit", "cli") for p in pathlib.Path("/src", top).rglob("*.py"))
failed = []
for path in files:
    try:
        compile(path.read_text(), str(path)[5:], "exec", dont_inherit=True)
    except SyntaxError as exc:
        failed.append(f"{exc.filename}:{exc.lineno}: {exc.msg}")
print("\\n".join(failed) or f"py310-check: {len(files)} modules compile on Python {sys.version.split()[0]}")
len(failed)
`);
  process.exit(failed ? 1 : 0);
});
endef
export PY310_CHECK

py310-check:
	test -f $(PY310_DIR)/node_modules/pyodide/pyodide.js || npm install --prefix $(PY310_DIR) --no-save --no-audit --no-fund --no-package-lock --silent pyodide@0.22.1
	node -e "$$PY310_CHECK" $(abspath $(PY310_DIR))

# Each test file runs in a process of its own: the deployers' clients some tests load (OpenCV DNN, OpenVINO,
# tflite-micro's nightly interpreter) are native libraries that stay out of the other files' processes (a
# whole-suite process once crashed in matplotlib after them).
TEST_FILES := $(sort $(wildcard tests/test_*.py))

test: install lint py310-check
	set -e; for file in $(TEST_FILES); do echo "$$file"; $(BIN)/python -m pytest -q -p no:cacheprovider "$$file"; done
	$(MAKE) edge-check

# Proves the packaging: the edge venv has no TensorFlow and still encodes a real export.
edge-check: install install-edge
	! $(EDGE_VENV)/bin/python -c "import tensorflow" 2>/dev/null
	$(EDGE_VENV)/bin/python -m pytest -q -p no:cacheprovider $(EDGE_TESTS)
	rm -rf $(CHECK_DIR)
	AEKIT_OFFLINE=1 $(BIN)/aekit train --dataset aekit/sample --epochs 1 --filters 8,16 --latent-dim 8 -o $(CHECK_DIR)/run --quiet
	$(BIN)/aekit export --run $(CHECK_DIR)/run --format onnx,tflite > /dev/null
	$(EDGE_VENV)/bin/aekit encode --model $(CHECK_DIR)/run/export/encoder.tflite aekit/sample/mnist-sample-images-idx3-ubyte.gz -o $(CHECK_DIR)/codes.npz --latent-dtype int8
	$(EDGE_VENV)/bin/aekit decode --model $(CHECK_DIR)/run/export/decoder.onnx $(CHECK_DIR)/codes.npz -o $(CHECK_DIR)/images.npz --format npz
	$(EDGE_VENV)/bin/python -c "import numpy as np; d = np.load('$(CHECK_DIR)/images.npz'); assert d['images'].shape == (10000, 28, 28, 1), d['images'].shape; print('edge-check: 10000 images encoded and decoded without TensorFlow')"
	rm -rf $(CHECK_DIR)

# The demo: the default recipe for 8 epochs on the 10,000 MNIST digits bundled with aekit, online or
# not (val MSE 0.0095, PSNR 21.3 dB; 32-90 s of training on 2 CPU cores); it ends with the commands to run next.
demo: install
	$(BIN)/aekit train --dataset bundled-mnist-sample --epochs 8

bench: install
	$(BIN)/python benchmarks/train_vs_reference.py

clean:
	rm -rf $(VENV) $(EDGE_VENV) $(CHECK_DIR) build *.egg-info
