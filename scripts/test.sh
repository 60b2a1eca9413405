#!/usr/bin/env bash
# Set up (once) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# Browser tests drive Debian's Chromium (no browser downloads here). Run this way (as CI does),
# a missing browser or Playwright fails those tests instead of skipping them; a developer
# running plain pytest without chromium still gets skips. REQUIRE_BROWSER=0 opts out.
export REQUIRE_BROWSER="${REQUIRE_BROWSER:-1}"
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium (browser tests will fail)" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
