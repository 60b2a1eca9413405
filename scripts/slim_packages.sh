#!/bin/sh
# Strip debug symbols from the installed shared libraries under $1 (the image's
# runtime packages). Wheels ship them unstripped: the Qdrant Edge engine alone
# carries ~6 MB of symbols. Code and data are untouched; the libraries load and run
# the same (bench/bench_footprint.py installs, slims and runs both stacks this way).
set -eu
root="${1:?usage: slim_packages.sh DIR}"
command -v strip >/dev/null 2>&1 || { echo "slim_packages.sh: strip (binutils) not found" >&2; exit 1; }
find "$root" -type f \( -name '*.so' -o -name '*.so.*' \) -exec strip --strip-unneeded {} +
