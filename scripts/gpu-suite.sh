#!/usr/bin/env bash
# Every GPU benchmark in one call of the lent GPU machine, the most wanted first, each bounded
# so that one that hangs leaves time for the rest; results land in RESULTS (6 files).
#
#   WHEELS=.whl RESULTS=$OUT scripts/gpu-suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export RESULTS=${RESULTS:-bench/results}
source scripts/gpu-env.sh || exit 1
status=0
step() { timeout "$1" "${@:2}" || { echo "FAILED ($?): ${*:2}"; status=1; }; }
step 150 env SWITCHES=off scripts/gpu-bench.sh --steps 50 --batches 1 8 --repeats 3
step 200 env MODEL=sdxl-random SWITCHES=off scripts/gpu-bench.sh --size 1024 --steps 25 \
  --batches 1 --repeats 3
step 120 python3 -m bench.loras --model sd15-random --steps 25 --repeats 8 \
  --json "$RESULTS/loras-sd15-random.json"
step 90 python3 -m bench.edits --model sd15-random --size 512 --steps 50 --repeats 3 \
  --json "$RESULTS/edits-sd15-random-gpu.json"
step 120 python3 -m bench.upscalers --model sd15-random --size 512 --steps 25 --repeats 3 \
  --json "$RESULTS/upscalers-sd15-random-gpu.json"
# sd15-random's compiled rows are in docs/benchmarks.md from an earlier run.
step 230 env MODEL=sdxl-random SWITCHES=compile scripts/gpu-bench.sh --size 1024 --steps 25 \
  --batches 1 --repeats 3
exit $status
