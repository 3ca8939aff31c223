# make reproduce | make test | make bench | make lint | make clean
# Each target sets up .venv first when needed (the only setup step there is).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cvpr24-installed
# torch first and pinned: 2.13.0 is the CPU build these machines install from local disk;
# any other pin (or none) pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: setup test reproduce bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[all,test]'
	@touch $@

test: setup
	$(BIN)/python -m pytest -n 2 -q --durations=15

reproduce: setup
	$(BIN)/cvpr24 reproduce --quick --out reports

bench: setup
	@set -e; for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f; done

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) reports .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
