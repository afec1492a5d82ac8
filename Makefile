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

.PHONY: demo test test-fast lint build info bench sanitize fuzz gpu-check gpu-wheels clean

demo: build
	$(PY) -m pathrt.cli demo

test: build
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

test-fast: build
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(DEPS)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

info: build
	$(PY) -m pathrt.cli info

bench: build
	$(PY) -m pathrt.cli bench

build: $(DEPS)

# The extension rebuilt with AddressSanitizer + UndefinedBehaviorSanitizer (CPU kernels, session,
# bundle reader) and the op and session tests run against it; any report fails the run.
SANITIZE_TESTS ?= tests/test_ops.py tests/test_fused_ops.py tests/test_generator_ops.py tests/test_session.py tests/test_call_pool.py
sanitize: $(DEPS)
	rm -rf build/sanitize
	PATHRT_SANITIZE=1 PATHRT_CUDA=0 $(PY) setup.py -q build_ext --build-lib build/sanitize --build-temp build/sanitize/tmp
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	PATHRT_EXTENSION_FILE="$$(ls build/sanitize/pathrt/_C*.so)" \
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests/sanitized/check_sanitizers.py $(SANITIZE_TESTS)

# Coverage-guided fuzzing (atheris/libFuzzer) of every loader: FUZZ_SECONDS per harness. With clang
# installed, the extension is rebuilt with coverage counters into build/fuzz so the C++ bundle reader
# is fuzzed with native coverage; without clang, the harnesses run on the installed extension with
# Python coverage only (said in the output). Runs and findings are recorded in runs/fuzz/.
FUZZ_SECONDS ?= 300
FUZZ_HARNESSES ?= artifact bundle onnx
CLANG_RT_FUZZER = $(shell clang -print-file-name=libclang_rt.fuzzer_no_main-x86_64.a 2>/dev/null)
fuzz: $(DEPS)
	@if command -v clang++ >/dev/null && [ -f "$(CLANG_RT_FUZZER)" ]; then \
	  rm -rf build/fuzz && \
	  CC=clang CXX=clang++ LDSHARED="clang++ -shared" PATHRT_FUZZ=1 PATHRT_CUDA=0 \
	    $(PY) setup.py -q build_ext --build-lib build/fuzz --build-temp build/fuzz/tmp && \
	  clang++ -shared -fPIC -o build/fuzz/libfuzzer_no_main.so -Wl,--whole-archive "$(CLANG_RT_FUZZER)" \
	    -Wl,--no-whole-archive -lpthread && \
	  $(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS) --harness $(FUZZ_HARNESSES) \
	    --extension "$$(ls build/fuzz/pathrt/_C*.so)"; \
	else \
	  echo "clang/libFuzzer not found (apt-get install clang libomp-dev): fuzzing with Python coverage only"; \
	  $(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS) --harness $(FUZZ_HARNESSES); \
	fi

# The one-shot GPU verification (shared/docs/GPU.md, benchmarks/gpu_check.py), run ON the GPU machine
# with its own python and torch and nothing from a registry: `make gpu-check OUT=dir`. Without a GPU
# it is a dry run (GPU_PYTHON=.venv/bin/python here). Bring build/gpu-wheels (`make gpu-wheels`,
# here) and runs/demo along. The summary table is printed last.
OUT ?= gpu-check
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	mkdir -p $(OUT) && set -o pipefail && PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_check.py --out $(OUT) \
	  $(GPU_CHECK_ARGS) 2>&1 | tee $(OUT)/log

# The cp312 wheels of the modules pathrt imports that the GPU machine lacks (GPU.md), for gpu-check.
GPU_WHEELS := jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
# With them OpenSSL's headers and libcrypto (the extension links it; the GPU machine may lack libssl-dev).
gpu-wheels: | $(PY)
	$(PIP) download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d build/gpu-wheels $(GPU_WHEELS)
	mkdir -p build/gpu-wheels/include build/gpu-wheels/lib
	cp -r /usr/include/openssl build/gpu-wheels/include/
	cp /usr/include/x86_64-linux-gnu/openssl/*.h build/gpu-wheels/include/openssl/
	cp -L /usr/lib/x86_64-linux-gnu/libcrypto.so.3 build/gpu-wheels/lib/

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, from the pinned versions on local disk; then the package without build isolation
# (an isolated build would install a second multi-GB torch), which compiles pathrt._C. Runs again
# when the extension's sources change (for quicker incremental C++ builds while developing:
# `.venv/bin/python setup.py build_ext --inplace`).
$(DEPS): pyproject.toml $(EXT_SOURCES) | $(PY)
	@[ -f /usr/include/openssl/evp.h ] || { echo "installing libssl-dev (OpenSSL's SHA-256 for bundle digests)"; \
	  apt-get update -qq && apt-get install -y -qq libssl-dev; }
	@command -v unshare >/dev/null && command -v ip >/dev/null || { echo "installing util-linux and iproute2 \
	  (the loopback-only network namespace of the Ray tests)"; apt-get update -qq && apt-get install -y -qq util-linux iproute2; }
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install "setuptools>=64" wheel "pybind11>=2.12" ninja
	$(PIP) install --no-build-isolation -e ".[dev,onnx,serve,ray]"
	touch $@

clean:
	rm -rf build pathrt/_C*.so *.egg-info
