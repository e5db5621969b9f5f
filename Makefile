# make install: .venv with aekit (editable) and the dev tools, from the package registries.
# make test: install if needed, then the test suite.  make demo: install, then a short training run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/aekit train --epochs 3

bench: install
	$(BIN)/python benchmarks/train_vs_reference.py

clean:
	rm -rf $(VENV) build *.egg-info
