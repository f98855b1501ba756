# The README's two commands:  make repro  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha256sum requirements.lock | cut -c1-12)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test lint lock clean

$(STAMP): requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements.lock
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

repro: install  ## fetch -> preprocess -> split -> train -> eval (set MOVIELENS_MIRROR=<dir> offline)
	$(BIN)/dvc repro

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint  ## lint + unit tests + the real-pipeline integration test
	$(BIN)/python -m pytest

lock:  ## re-resolve requirements.lock from pyproject.toml (a deliberate upgrade)
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet torch==2.13.0 -e '.[dev]'
	.lockenv/bin/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lockenv

clean:
	rm -rf $(VENV)
