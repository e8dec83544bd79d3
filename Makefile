# coremachine_embedded - the two set-up commands are `make demo` and `make test`.
#
#   make demo      build, then run the demo on the embedded defaults
#   make test      C tests (native, armhf and aarch64 under qemu) + the Python
#                  suite on both backends
#   make bench     benchmarks against the alternatives, as ratios
#   make ctest     only the C core's tests, natively
#   make wheels    wheels for x86_64 and the Pi (aarch64, armv7l) in dist/wheels
#
# Everything Python runs in the virtual environment $(VENV) (default .venv), made
# from $(PYTHON) (default python3; e.g. make demo PYTHON=/usr/bin/python3): the
# system Python is never changed. `. .venv/bin/activate` puts `coremachine` on PATH.

PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
# Tests find the venv's tools (micropython, coremachine) on PATH.
VENV_PATH = PATH="$(abspath $(VENV))/bin:$$PATH"
CC ?= cc
CFLAGS_COMMON = -std=c99 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
                -D_FILE_OFFSET_BITS=64 -D_DEFAULT_SOURCE
CSRC = $(filter-out csrc/tests/%,$(wildcard csrc/*.c))
CHDR = $(wildcard csrc/*.h)
# The C tests: one program, test_cm (csrc/tests/test_cm.c runs the others).
CTESTS = $(wildcard csrc/tests/*.c)
BUILD = build/c
VECTORS = tests/interop/vectors/hypercore-v11.json
WIRE_VECTORS = $(wildcard tests/interop/vectors/wire/*.json)
PYTEST_ARGS ?=

.PHONY: all deps test-deps build demo test ctest ctest-native ctest-asan ctest-armhf ctest-aarch64 \
        pytest pytest-c pytest-python bench clean distclean

all: build

# Installs libsodium-dev and a C compiler when missing, and makes $(VENV) with the
# build packages and this package (editable, with the coremachine command).
deps:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" sh .ci/ensure-deps.sh

build: deps
	COREMACHINE_IMPL=c $(PY) setup.py -q build_ext --inplace

demo: build
	$(VENV)/bin/coremachine demo

test: test-deps build ctest-native ctest-armhf ctest-aarch64 pytest

test-deps:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" sh .ci/ensure-deps.sh --test --cross

# --- C core ---------------------------------------------------------------

$(BUILD)/vectors.h: $(VECTORS) csrc/tests/gen_vectors.py
	@mkdir -p $(BUILD)
	$(PYTHON) csrc/tests/gen_vectors.py $(VECTORS) $@

$(BUILD)/wire_vectors.h: $(WIRE_VECTORS) csrc/tests/gen_wire_vectors.py
	@mkdir -p $(BUILD)
	$(PYTHON) csrc/tests/gen_wire_vectors.py tests/interop/vectors/wire $@

ctest: ctest-native

ctest-native: $(BUILD)/vectors.h $(BUILD)/wire_vectors.h
	$(CC) $(CFLAGS_COMMON) -g -I csrc -I $(BUILD) -o $(BUILD)/test_cm_native \
	    $(CSRC) $(CTESTS) $$(pkg-config --cflags --libs libsodium)
	$(BUILD)/test_cm_native $(BUILD)/tmp-native

# Native build with AddressSanitizer + UndefinedBehaviorSanitizer (not part of `test`).
ctest-asan: $(BUILD)/vectors.h $(BUILD)/wire_vectors.h
	$(CC) $(CFLAGS_COMMON) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	    -I csrc -I $(BUILD) -o $(BUILD)/test_cm_asan \
	    $(CSRC) $(CTESTS) $$(pkg-config --cflags --libs libsodium)
	$(BUILD)/test_cm_asan $(BUILD)/tmp-asan

ctest-armhf: $(BUILD)/vectors.h $(BUILD)/wire_vectors.h
	@if command -v arm-linux-gnueabihf-gcc >/dev/null && command -v qemu-arm >/dev/null \
	    && [ -e /usr/lib/arm-linux-gnueabihf/libsodium.so ]; then \
	  echo "arm-linux-gnueabihf-gcc + qemu-arm (32-bit Raspberry Pi OS)"; \
	  arm-linux-gnueabihf-gcc $(CFLAGS_COMMON) -I csrc -I $(BUILD) -o $(BUILD)/test_cm_armhf \
	      $(CSRC) $(CTESTS) -lsodium && \
	  qemu-arm -L /usr/arm-linux-gnueabihf $(BUILD)/test_cm_armhf $(BUILD)/tmp-armhf; \
	else \
	  echo "SKIPPED ctest-armhf: no cross toolchain. As root: sh .ci/ensure-deps.sh --cross"; \
	fi

ctest-aarch64: $(BUILD)/vectors.h $(BUILD)/wire_vectors.h
	@if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null \
	    && [ -e /usr/lib/aarch64-linux-gnu/libsodium.so ]; then \
	  echo "aarch64-linux-gnu-gcc + qemu-aarch64 (64-bit Raspberry Pi OS)"; \
	  aarch64-linux-gnu-gcc $(CFLAGS_COMMON) -I csrc -I $(BUILD) -o $(BUILD)/test_cm_aarch64 \
	      $(CSRC) $(CTESTS) -lsodium && \
	  qemu-aarch64 -L /usr/aarch64-linux-gnu $(BUILD)/test_cm_aarch64 $(BUILD)/tmp-aarch64; \
	else \
	  echo "SKIPPED ctest-aarch64: no cross toolchain. As root: sh .ci/ensure-deps.sh --cross"; \
	fi

# --- Python suite, once per backend ---------------------------------------
# The two backends' runs go side by side (PYTEST_JOBS=1: one after the other):
# much of the suite waits on sockets, subprocesses and qemu, so two runs on two
# cores take about 60% of the time of one after the other.  Each run's output is
# printed whole when it ends.
PYTEST_JOBS ?= 2

pytest:
	@echo "pytest: the C and the Python backend, $(PYTEST_JOBS) at a time (output when each ends)"
	@$(MAKE) --no-print-directory -j$(PYTEST_JOBS) --output-sync=target pytest-c pytest-python

pytest-c:
	$(VENV_PATH) COREMACHINE_IMPL=c $(PY) -m pytest -q $(PYTEST_ARGS) tests

pytest-python:
	$(VENV_PATH) COREMACHINE_IMPL=python $(PY) -m pytest -q $(PYTEST_ARGS) tests

# --- Wheels for the Pi: docs/wheels.md -------------------------------------

.PHONY: wheels
wheels:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" sh .ci/ensure-deps.sh --wheels
	$(PY) tools/wheels.py --out dist/wheels

bench: build
	$(VENV_PATH) $(PY) -m bench

# Keeps $(VENV); `make distclean` removes it too.
clean:
	rm -rf build dist *.egg-info coremachine_embedded/_core.c coremachine_embedded/*.so

distclean: clean
	rm -rf $(VENV) .cache .hypothesis .pytest_cache .mypy_cache
