# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo

.PHONY: setup demo test bench gpu-check gpu-wheels clean

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
	$(BIN)/python -m pytest -q --durations=25

bench: setup
	mkdir -p runs
	$(BIN)/sonostream bench build --json runs/bench_build.json
	$(BIN)/sonostream bench loader --json runs/bench_loader.json
	$(BIN)/sonostream bench step --json runs/bench_step.json

# The prepared check for a borrowed GPU machine (README "GPU check"): one JSON of figures.
# DRY_RUN=1: the same on CPU, GPU-only steps skipped (what tests/test_pipeline/apps/test_bench_gpu.py runs).
# On a GPU machine without this venv or network: bash launch/gpu_check.sh (installs wheels/).
gpu-check:
	mkdir -p runs
	$(BIN)/sonostream bench gpu --json runs/gpu_check.json --log runs/gpu_check.log $(if $(DRY_RUN),--dry-run)

# On a networked machine: the GPU-side packages a bare CUDA + PyTorch machine lacks, for Python
# $(GPU_PY) on x86-64 Linux, into $(WHEELS)/ (gitignored); files over 60 MB are split into
# NAME.part-aa, -ab, ... (launch/gpu_check.sh joins them). Pins: launch/constraints.txt and the
# versions the CPU venv resolved for DALI 2.4.0. DeepSpeed comes as its sdist (PyPI has no wheel).
# GPU_EXTRA: more packages, e.g. the project's own dependencies if that machine lacks them
# (`make gpu-wheels GPU_EXTRA="accelerate pyarrow opencv-python-headless"`).
WHEELS ?= wheels
GPU_PY ?= 3.12
GPU_WHEEL_PKGS := nvidia-dali-cuda130 nvidia-nvimgcodec-cu13==0.9.0.20 \
	nvidia-libnvcomp-cu13==5.3.0.16 nvidia-nvjpeg==13.3.2.43 nvidia-nvjpeg2k-cu13==0.11.0.51 \
	nvidia-nvtiff-cu13==0.8.0.82 nvtx astunparse gast libcst makefun optree \
	hjson py-cpuinfo msgpack ninja einops
gpu-wheels: setup
	mkdir -p $(WHEELS)
	$(BIN)/python -m pip download --dest $(WHEELS) --no-deps --only-binary=:all: \
		--python-version $(GPU_PY) --implementation cp --platform manylinux2014_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_28_x86_64 -c launch/constraints.txt $(GPU_WHEEL_PKGS) $(GPU_EXTRA)
	$(BIN)/python -m pip download --dest $(WHEELS) --no-deps --no-binary=:all: \
		--no-build-isolation -c launch/constraints.txt deepspeed
	cd $(WHEELS) && for f in *; do \
		case "$$f" in *.part-*) continue ;; esac; \
		if [ "$$(stat -c %s "$$f")" -gt 62914560 ]; then split -b 60M "$$f" "$$f.part-" && rm "$$f"; fi; \
	done
	ls -l $(WHEELS)

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
