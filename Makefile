# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# Re-install whenever pyproject.toml changes (new dependencies).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# DeepSpeed (for the ZeRO-2 test) builds against the torch already installed: after it, without
# build isolation (else its build pulls another torch), and with DS_BUILD_OPS=0 (no CUDA ops at
# install time). Accelerate's DeepSpeed path imports transformers, so that comes too.
$(VENV)/.deepspeed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet setuptools wheel
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed==0.19.8" "transformers==5.23.0"
	touch $@

# The main job on the built-in synthetic cohort: synth -> build -> verify -> inspect -> stream
# -> pretrain (debug size, CPU; a re-run continues from the run's last checkpoint)
# -> label-efficiency experiment (scratch vs pretrained x supervised/semi/multitask x 5-100%
# labels: 24 small fine-tuning runs, each evaluated; a re-run skips finished runs) -> evaluate.
demo: setup
	$(BIN)/sonostream synth --out $(DEMO)/cohort --preview $(DEMO)/synth_preview.png
	$(BIN)/sonostream build --csv $(DEMO)/cohort/frames.csv --out $(DEMO)/shards \
		--val-fraction 0.1 --test-fraction 0.25
	$(BIN)/sonostream verify $(DEMO)/shards
	$(BIN)/sonostream inspect $(DEMO)/shards --contact-sheet $(DEMO)/contact_sheet.png
	$(BIN)/sonostream loader $(DEMO)/shards --loader auto --batch-size 16 --clip-len 4 --epochs 2
	$(BIN)/sonostream pretrain --config launch/configs/debug/pretrain.yaml --data $(DEMO)/shards \
		--out $(DEMO)/pretrain $$(test -f $(DEMO)/pretrain/checkpoints/latest && echo --resume latest)
	$(BIN)/sonostream experiment label-efficiency --data $(DEMO)/shards --out $(DEMO)/label_efficiency \
		--encoder $(DEMO)/pretrain/encoder.pt --config launch/configs/debug/finetune.yaml
	$(BIN)/sonostream evaluate --checkpoint $(DEMO)/label_efficiency/runs/pretrained-semi-0.1/segmenter.pt \
		--data $(DEMO)/shards --split test --out $(DEMO)/evaluate --quiet

test: setup $(VENV)/.deepspeed
	$(BIN)/python -m pytest -q

bench: setup
	mkdir -p runs
	$(BIN)/sonostream bench build --json runs/bench_build.json
	$(BIN)/sonostream bench loader --json runs/bench_loader.json
	$(BIN)/sonostream bench step --json runs/bench_step.json

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
