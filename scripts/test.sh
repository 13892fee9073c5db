#!/usr/bin/env bash
# Install everything the tests need into .venv, then run lint, type checks and the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not e2e"`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  # The /docs test drives Debian's Chromium; Playwright's own browser download is not used.
  sudo_if_needed=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq chromium >/dev/null
fi

python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]"

export BENTOML_DO_NOT_TRACK=true
# Fail, rather than skip, the browser test if Chromium is missing.
export IMAGEGEN_REQUIRE_BROWSER=1

ruff check .
ruff format --check .
mypy
python -m pytest "$@"
