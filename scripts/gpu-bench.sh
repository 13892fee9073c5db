#!/usr/bin/env bash
# The GPU benchmark end to end on the project's lent GPU machine (see scripts/gpu-env.sh):
# build MODEL (sd15-random, or sdxl-random) from code into a fresh model store, then run
# `python -m bench.gpu` one switch per process, so a run cut short still leaves every
# finished row in RESULTS.
#
#   WHEELS=.whl RESULTS=$OUT scripts/gpu-bench.sh [bench.gpu arguments, e.g. --steps 50]
#   MODEL=sdxl-random SWITCHES="off compile" scripts/gpu-bench.sh --size 1024 --batches 1
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-bench/results}
SWITCHES=${SWITCHES:-off channels_last cpu_offload attention_slicing vae_slicing vae_tiling compile}
MODEL=${MODEL:-sd15-random}
source scripts/gpu-env.sh || exit 1
python3 -m models build "$MODEL" || exit 1
mkdir -p "$RESULTS"
status=0
for switch in $SWITCHES; do
  python3 -m bench.gpu --model "$MODEL" --switches "$switch" \
    --json "$RESULTS/gpu-$MODEL-$switch.json" "$@" || status=1
done
exit $status
