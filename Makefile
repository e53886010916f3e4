# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install sample-runs bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel first, so that no resolver pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stability demo

test: $(STAMP)
	# Two workers on the machine's two cores; a test file stays on one worker (its module fixtures are built once).
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

sample-runs: $(STAMP)
	$(BIN)/stability sample-runs --out sample_runs --force --jobs 2

bench: $(STAMP)
	# The peers of the overhead benchmark (TensorBoard, W&B offline).
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/stability bench overhead --json
	$(BIN)/stability bench attention --json
	$(BIN)/stability bench watch --json
	$(BIN)/stability bench store --json
	$(BIN)/stability bench policies --json
	$(BIN)/stability bench dashboard --json

clean:
	rm -rf $(VENV) build *.egg-info
