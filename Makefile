# pathrt: the two commands a newcomer needs are `make demo` and `make test`; each installs what is
# missing (virtual environment, dependencies, the compiled extension) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
DEPS := $(VENV)/.pathrt-installed
EXT_SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h')
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint build info bench clean

demo: build
	$(PY) -m pathrt.cli demo

test: build
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: build
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(DEPS)
	$(PY) -m ruff check .

info: build
	$(PY) -m pathrt.cli info

bench: build
	$(PY) -m pathrt.cli bench

build: $(DEPS)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, from the pinned versions on local disk; then the package without build isolation
# (an isolated build would install a second multi-GB torch), which compiles pathrt._C. Runs again
# when the extension's sources change (for quicker incremental C++ builds while developing:
# `.venv/bin/python setup.py build_ext --inplace`).
$(DEPS): pyproject.toml $(EXT_SOURCES) | $(PY)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install "setuptools>=64" wheel "pybind11>=2.12" ninja
	$(PIP) install --no-build-isolation -e ".[dev,onnx]"
	touch $@

clean:
	rm -rf build pathrt/_C*.so *.egg-info
