# Sourced by the GPU scripts on the lent machine (CUDA torch, no package registry): installs
# the carried wheels in WHEELS once, and points Python at them, this checkout and a fresh model
# store. WHEELS holds requirements.txt's closure for that machine's Python (3.12, manylinux
# x86_64) without torch and what the machine already has (torch, its CUDA and Triton wheels,
# NumPy, SciPy, Pillow, tokenizers, safetensors, peft): list it with `pip install --dry-run
# --report r.json --ignore-installed --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 --target /tmp/x -r requirements.txt`, then download those wheels
# (about 37 MB), and spandrel's wheel (requirements-upscalers.txt; installed here without
# dependencies like every carried wheel).
WHEELS=${WHEELS:-.whl}
if [ ! -d /tmp/site/diffusers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || return 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
export PYTHONPATH="/tmp/site:$PWD" BENTOML_HOME=/tmp/bentoml BENTOML_DO_NOT_TRACK=true \
  PYTHONUNBUFFERED=1
python3 -c 'import torch, diffusers, bentoml; print("torch", torch.__version__,
  "diffusers", diffusers.__version__, "bentoml", bentoml.__version__)' || return 1
