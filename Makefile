# The two commands of the README: `make train` and `make test`.
# Each creates .venv when it is missing and (re)installs the package when pyproject.toml changes.
#   make train TORCH=cpu   installs PyTorch's CPU-only build first (about 1 GB instead of the 5 GB CUDA build)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=
TORCH ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: train test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
ifeq ($(TORCH),cpu)
	$(BIN)/python -m pip install torch torchvision --index-url $(TORCH_CPU_INDEX)
endif

# The cluster extra brings the joblib and SLURM launchers and the Optuna sweeper (configs/hydra/).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[cluster]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(VENV)/.installed

train: $(VENV)/.installed
	$(BIN)/gentrain $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)
