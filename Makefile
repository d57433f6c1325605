# Two commands do all the set-up on a fresh machine:
#   make demo   -- capture EfficientNet-Lite0 (pretrained), run the float passes, print the report
#   make test   -- run the test suite
# Both create .venv and install the pinned dependencies on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# More hypothesis examples per property test: make test QCOMPILER_EXAMPLES=2000
QCOMPILER_EXAMPLES ?= 200
JOBS ?= 2

.PHONY: demo test bench clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml debian-packages.txt scripts/setup-arm.sh \
          targets/arm/runner.cc targets/arm/count_plugin.c
	bash scripts/install-debian-packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: anything that would upgrade it is installed with --no-deps.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	# the arm_cpu target's tools: aarch64 TVM runtime, runner, instruction-counting plugin
	bash scripts/setup-arm.sh
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m qcompiler.demo

test: $(STAMP)
	QCOMPILER_EXAMPLES=$(QCOMPILER_EXAMPLES) $(PY) -m pytest -n $(JOBS) --dist worksteal --durations=15 tests

bench: $(STAMP)
	$(PY) bench/cle.py

clean-venv:
	rm -rf $(VENV)
