#!/usr/bin/env bash
# The GPU benchmark end to end on a machine with CUDA torch and no package registry (the
# project's lent GPU machine): install the carried wheels, build MODEL (sd15-random, or
# sdxl-random) from code into a fresh model store, then run `python -m bench.gpu` one switch
# per process, so a run cut short still leaves every finished row in RESULTS.
#
#   WHEELS=.whl RESULTS=$OUT scripts/gpu-bench.sh [bench.gpu arguments, e.g. --steps 50]
#   MODEL=sdxl-random SWITCHES="off compile" scripts/gpu-bench.sh --size 1024 --batches 1
#
# WHEELS holds requirements.txt's closure for that machine's Python (3.12, manylinux x86_64)
# without torch and what the machine already has (torch, its CUDA and Triton wheels, NumPy,
# SciPy, Pillow, tokenizers, safetensors): list it with `pip install --dry-run --report r.json
# --ignore-installed --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
# --target /tmp/x -r requirements.txt`, then download those wheels (about 37 MB).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
RESULTS=${RESULTS:-bench/results}
SWITCHES=${SWITCHES:-off channels_last cpu_offload attention_slicing vae_slicing vae_tiling compile}
MODEL=${MODEL:-sd15-random}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$WHEELS"/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" BENTOML_HOME=/tmp/bentoml BENTOML_DO_NOT_TRACK=true \
  PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, diffusers, bentoml; print("torch", torch.__version__,
  "diffusers", diffusers.__version__, "bentoml", bentoml.__version__)' || exit 1
python3 -m models build "$MODEL" || exit 1
mkdir -p "$RESULTS"
status=0
for switch in $SWITCHES; do
  python3 -m bench.gpu --model "$MODEL" --switches "$switch" \
    --json "$RESULTS/gpu-$MODEL-$switch.json" "$@" || status=1
done
exit $status
