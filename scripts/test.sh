#!/usr/bin/env bash
# Install everything the tests need into .venv, then run lint, type checks, the import
# contracts and the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not e2e"`.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages a fresh Debian lacks: Chromium for the browser tests (Playwright's own browser
# download is not used), libatomic1 for Playwright's bundled Node.js driver, and a C++ compiler
# with Python's headers for torch.compile's CPU backend (the compile test), and Redis for the
# tests of replicas sharing state (they start their own redis-server on a free port).
system_packages=(chromium libatomic1 g++ python3-dev redis-server)
missing=()
for package in "${system_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_if_needed=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq \
    "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps -r requirements-upscalers.txt

export BENTOML_DO_NOT_TRACK=true
# Fail, rather than skip, the browser test if Chromium is missing.
export IMAGEGEN_REQUIRE_BROWSER=1

ruff check .
ruff format --check .
mypy
lint-imports
# The slowest tests in the CI log, to keep the suite's time in view.
python -m pytest --durations=25 "$@"
