# seal-exp. Every target creates .venv and installs the package (editable, with dev tools) on first use.
#   make train ARGS="distiller=kd neuron.T=2"     make test PYTEST_ARGS="-k losses"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= auto# make test: one pytest-xdist worker per CPU core (TEST_WORKERS=0: one process)
PORT ?= 5000
ROOT ?= $(CURDIR)
SWEEP ?= distiller.alpha=0.3,0.6 distiller.beta=0.05,0.15 neuron.T=2,4 trainer.epochs=3
SWEEP_NAME := sweep/$(shell date +%Y-%m-%d_%H-%M-%S)_$(shell od -An -N2 -tx1 /dev/urandom | tr -d " \n")
SWEEP_DIR ?=# default: <paths.root>/multirun/$(SWEEP_NAME), paths.root as ARGS (or conf/local) set it

.PHONY: help install train evaluate test test-slurm sweep compare ui lint clean models bench

help:
	@echo "make train   the default run: SeAl-KD, ANN teacher -> spiking CNN on real MNIST-5k (~3 min on 2 CPU cores)"
	@echo "make evaluate RUN=<run folder | MLflow run id> [ARGS=\"eval.attack=pgd eval.timesteps=[1,2,6]\"]  a finished run's energy, T' and robustness"
	@echo "make test    the test suite without the SLURM tests, a pytest-xdist worker per core (~10 min on 2 CPU cores; the 15 slowest tests are listed at the end)"
	@echo "make test-slurm  the tests against a real SLURM cluster (sudo scripts/slurm-local.sh start first; ~25 min)"
	@echo "make sweep   a local alpha x beta x T multirun ($(SWEEP)), one MLflow parent run, then its report"
	@echo "make compare every distiller x seeds 0,1,2 on the embedded data, then a mean +- sd table (long on a CPU)"
	@echo "make ui      mlflow ui on http://127.0.0.1:$(PORT) over ROOT's mlflow.db (ROOT: paths.root, default the checkout); prints a runs-table URL per experiment and per sweep first"
	@echo "make models  every student and teacher with its parameter count (ARGS: dataset overrides)"
	@echo "make bench   speed figures: training/evaluation step, plain path vs configured (ARGS: overrides; minutes on a CPU; BENCHMARKS.md)"
	@echo "make lint    ruff check + format check"
	@echo "make clean   remove Python caches and build leftovers (runs, mlflow.db and the teacher cache are kept)"
	@echo "Pass Hydra overrides with ARGS=\"...\"."

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m seal_exp.train $(ARGS)

evaluate: $(STAMP)
	@test -n "$(RUN)" || { echo "make evaluate RUN=<run folder | MLflow run id> [ARGS=\"eval.attack=pgd ...\"]" >&2; exit 2; }
	$(BIN)/python -m seal_exp.evaluate $(RUN) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope -m "not slurm" $(PYTEST_ARGS)

test-slurm: $(STAMP)
	$(BIN)/python -m pytest -m slurm $(PYTEST_ARGS)

sweep: $(STAMP)
	@dir="$(SWEEP_DIR)"; test -n "$$dir" || dir="$$($(BIN)/python -m seal_exp.compare --print-multirun-root $(ARGS))/$(SWEEP_NAME)" || exit 2; \
	echo "sweep folder: $$dir"; \
	$(BIN)/python -m seal_exp.train -m $(SWEEP) hydra.sweep.dir="$$dir" $(ARGS) && $(BIN)/python -m seal_exp.report "$$dir"

compare: $(STAMP)
	$(BIN)/python -m seal_exp.compare $(ARGS)

models: $(STAMP)
	$(BIN)/python -m seal_exp.models $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m seal_exp.bench step --compare $(ARGS)

ui: $(STAMP)
	@$(BIN)/python -m seal_exp.results.mlflow_views $(ROOT) http://127.0.0.1:$(PORT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(ROOT))/mlflow.db --host 127.0.0.1 --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check seal_exp tests
	$(BIN)/ruff format --check seal_exp tests

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
