# make repro : set up (virtual environment, requirements, the default data set), then `dvc repro`
# make test  : the whole test suite, as CI runs it (sets up first if needed)
# make quick : the suite without the slow end-to-end tests (real `dvc repro`, torchrun): a quick answer
# make lint  : ruff check and format check
# The virtual environment lives outside the clone, keyed by a hash of requirements.txt, so fresh clones
# reuse it; .venv is a link to it. Override with VENV=path.
.DEFAULT_GOAL := help
PYTHON ?= python3.11
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-12)
VENV ?= $(HOME)/.cache/ensemble-bench/venv-$(REQ_HASH)
BIN := $(VENV)/bin
export PATH := $(BIN):$(PATH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
FMNIST := /usr/share/datasets/fashion-mnist

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# No prerequisite on purpose: the folder name carries the requirements' hash, and a fresh clone's newer
# requirements.txt mtime must not rebuild a cached environment. The stamp is written only after a full install.
$(VENV)/.complete:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -r requirements.txt
	touch $@

setup: $(VENV)/.complete data  ## create the virtual environment and install the default data set
	ln -sfn $(VENV) .venv

# data/raw/fashion-mnist (params.yaml data.path) is the prepare stage's dependency: it must exist before
# `dvc repro`. Filled from Debian's package where apt is available; else left empty and prepare downloads into it.
data:  ## put Fashion-MNIST in data/raw/fashion-mnist (from Debian's dataset-fashion-mnist, else prepare downloads it)
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "note: could not install dataset-fashion-mnist; the prepare stage will download Fashion-MNIST"; \
	fi
	@mkdir -p data/raw/fashion-mnist
	@if [ -d $(FMNIST) ]; then cp -n $(FMNIST)/*-ubyte* data/raw/fashion-mnist/; fi

repro: setup  ## set up, then run the default benchmark with `dvc repro`
	dvc repro

test: setup  ## the whole test suite (CPU only, no network), as CI runs it
	HF_HUB_OFFLINE=1 python -m pytest -m "not gpu"

quick: setup  ## the suite without the tests marked slow (real dvc repro, torchrun): a quick answer
	HF_HUB_OFFLINE=1 python -m pytest

lint: setup  ## ruff lint and format check
	ruff check . && ruff format --check .

.PHONY: help setup data repro test quick lint
