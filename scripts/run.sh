#!/usr/bin/env bash
# Set up (once) and run the service on its embedded default: no keys, no Qdrant.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
exec .venv/bin/uvicorn main:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
