# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# Re-install whenever pyproject.toml changes (new dependencies).
# launch/constraints.txt pins what the tests ran on (the Dockerfile installs the same).
$(VENV)/.installed: pyproject.toml launch/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c launch/constraints.txt
	touch $@

# DeepSpeed (for the ZeRO-2 test) builds against the torch already installed: after it, without
# build isolation (else its build pulls another torch), and with DS_BUILD_OPS=0 (no CUDA ops at
# install time). Accelerate's DeepSpeed path imports transformers, so that comes too.
$(VENV)/.deepspeed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet setuptools wheel
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation -c launch/constraints.txt deepspeed transformers
	touch $@

# The main job on the built-in synthetic cohort, ending in $(DEMO)/report.md: synth -> build ->
# verify -> inspect -> pretrain -> finetune (supervised, semi, multitask) -> evaluate ->
# label-efficiency (small) -> segment-video on a synthetic sweep and a real 2-frame DICOM -> report.
# README's Set-up gives its time on 2 CPU cores; a re-run skips finished stages (see `sonostream demo --help`).
demo: setup
	$(BIN)/sonostream demo --out $(DEMO)

test: setup $(VENV)/.deepspeed
	$(BIN)/python -m pytest -q

bench: setup
	mkdir -p runs
	$(BIN)/sonostream bench build --json runs/bench_build.json
	$(BIN)/sonostream bench loader --json runs/bench_loader.json
	$(BIN)/sonostream bench step --json runs/bench_step.json

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
