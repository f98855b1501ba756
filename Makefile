# The README's two commands:  make repro  |  make test   (make test-fast: unit tests only)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test test-fast lint lock clean mutation figures results

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

repro: install  ## fetch -> preprocess -> split -> train -> eval (set MOVIELENS_MIRROR=<dir> offline)
	$(BIN)/dvc repro

# FIGURES_ARGS: e.g. --rev <commit> or --all-commits (the experiments of another baseline)
figures: install  ## PNGs of the experiments present (else the workspace run) -> reports/figures/
	$(BIN)/deepfm report figures $(FIGURES_ARGS)

# The headline: every model x seeds 1-5 x both tie-breaks as DVC experiments (hours on 2 cores),
# then results/runs*/ records, reports/results.md and the figures. RESULTS_ARGS: e.g. --dry-run
results: install  ## the documented sweep, its records, table and figures
	$(BIN)/deepfm report sweep $(RESULTS_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two xdist workers, one torch thread each; the real-pipeline modules start first, each whole
# on one worker, and the unit tests fill in (tests/conftest.py, docs/testing.md).
PYTEST_N := -n 2

test: lint  ## lint + unit tests + the real-pipeline integration tests
	$(BIN)/python -m pytest $(PYTEST_N)

test-fast: install  ## the unit tests alone, for the inner loop (no real pipeline)
	$(BIN)/python -m pytest $(PYTEST_N) -m "not integration"

# The functions whose code produces reported numbers (fnmatch patterns over mutmut's names).
MUTANTS := 'deepfm.data.splitting.*' 'deepfm.data.fields.*' 'deepfm.data.sampling.*' 'deepfm.data.batches.*' \
	'deepfm.evaluation.ranking.*' 'deepfm.evaluation.metrics.*' \
	'deepfm.training.resume.x_run_fingerprint*' 'deepfm.training.resume.x_*_resume*' \
	'deepfm.results.statistics.x_summarize*' 'deepfm.results.statistics.x_bootstrap_mean_ci*' \
	'deepfm.results.statistics.x_wilcoxon_p*' 'deepfm.results.statistics.x_paired_*' 'deepfm.results.statistics.x_*user*' \
	'deepfm.results.statistics.x_mean_over_runs*' 'deepfm.results.statistics.x_parse_rank_metric*'

mutation: install  ## mutation testing by hand (docs/testing.md); one core, one worker
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements-mutation.lock
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 $(BIN)/mutmut run --max-children 1 $(MUTANTS)
	$(BIN)/mutmut results

lock:  ## re-resolve requirements.lock from pyproject.toml (a deliberate upgrade)
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet torch==2.13.0 -e '.[dev]'
	.lockenv/bin/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lockenv

clean:
	rm -rf $(VENV)
