# make repro : set up (virtual environment, requirements, the default data set), then `dvc repro`
# make test  : the whole test suite, as CI runs it (sets up first if needed)
# make quick : the suite without the slow end-to-end tests (real `dvc repro`, torchrun): a quick answer
# make study : the seeds' GPU study (python -m bench.study)
# make lint  : ruff check and format check
# Python: PYTHON=..., else `python3` where it is a version the pinned libraries support (3.11, 3.12, 3.13: Debian
# 13's 3.13, Ubuntu 24.04's and Colab's 3.12), else the first python3.13 / python3.12 / python3.11 on PATH.
# The virtual environment lives outside the clone, keyed by that Python's version and a hash of requirements.txt,
# so fresh clones reuse it and two Pythons never share one; .venv is a link to it. Override with VENV=path.
.DEFAULT_GOAL := help
SUPPORTED := 3.11 3.12 3.13
version_of = $(shell $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PYTHON ?= $(firstword $(foreach p,python3 $(foreach v,$(SUPPORTED),python$(v)),$(if $(filter $(SUPPORTED),$(call version_of,$(p))),$(p))))
PY_VERSION := $(if $(PYTHON),$(call version_of,$(PYTHON)))
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-12)
VENV ?= $(HOME)/.cache/ensemble-bench/venv-py$(PY_VERSION)-$(REQ_HASH)
BIN := $(VENV)/bin
export PATH := $(BIN):$(PATH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
FMNIST := /usr/share/datasets/fashion-mnist

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# No prerequisite on purpose: the folder name carries the requirements' hash, and a fresh clone's newer
# requirements.txt mtime must not rebuild a cached environment. The stamp is written only after a full install.
$(VENV)/.complete:
	@$(MAKE) --no-print-directory python
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || { echo "error: $(PYTHON) cannot make a virtual environment: install python$(PY_VERSION)-venv (Debian/Ubuntu: apt-get install python$(PY_VERSION)-venv)"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -r requirements.txt
	touch $@

python:  ## say which Python the set-up uses, or what to install when none fits
	@if [ -z "$(PY_VERSION)" ] || [ -z "$(filter $(SUPPORTED),$(PY_VERSION))" ]; then \
	  echo "error: no supported Python found ($(if $(PYTHON),$(PYTHON) is $(or $(PY_VERSION),not runnable),none of python3, $(foreach v,$(SUPPORTED),python$(v)) fits)): torch 2.14 and the pinned libraries need Python $(SUPPORTED). Install one (Debian/Ubuntu: apt-get install python3.12 python3.12-venv) or pass PYTHON=/path/to/python3.x" >&2; \
	  exit 1; \
	fi
	@echo "Python $(PY_VERSION): $$(command -v $(PYTHON) || echo $(PYTHON)); environment $(VENV)"

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

study: setup  ## the seeds' study on a GPU: four ImageNet nets fine-tuned on CIFAR-10, ensembled (network needed)
	python -m bench.study

lint: setup  ## ruff lint and format check
	ruff check . && ruff format --check .

.PHONY: help python setup data repro test quick study lint
