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

# The main job on the built-in synthetic cohort: synth -> build -> verify -> inspect -> stream.
demo: setup
	$(BIN)/sonostream synth --out $(DEMO)/cohort --preview $(DEMO)/synth_preview.png
	$(BIN)/sonostream build --csv $(DEMO)/cohort/frames.csv --out $(DEMO)/shards
	$(BIN)/sonostream verify $(DEMO)/shards
	$(BIN)/sonostream inspect $(DEMO)/shards --contact-sheet $(DEMO)/contact_sheet.png
	$(BIN)/sonostream loader $(DEMO)/shards --loader auto --batch-size 16 --clip-len 4 --epochs 2

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	mkdir -p runs
	$(BIN)/sonostream bench build --json runs/bench_build.json
	$(BIN)/sonostream bench loader --json runs/bench_loader.json

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
