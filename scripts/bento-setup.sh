#!/usr/bin/env bash
# Run by `bentoml containerize` right after the bento's Python packages are installed
# (bentofiles' `docker.setup_script`), before the bento's source is copied in: spandrel,
# without the torchvision it asks for, as on every install (requirements-upscalers.txt says
# why, and holds this same pin: tests/test_upscalers.py checks they agree).
set -euo pipefail
uv pip install --no-deps "spandrel==0.4.2"
