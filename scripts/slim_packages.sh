#!/bin/sh
# Strip debug symbols from the installed shared libraries under $1 (the image's
# runtime packages). Wheels ship them unstripped: the Qdrant Edge engine alone
# carries ~6 MB of symbols. Code and data are untouched; the libraries load and run
# the same (bench/bench_footprint.py installs, slims and runs both stacks this way).
#
# Libraries that auditwheel vendored into a `<package>.libs/` folder are left alone:
# patchelf rewrote their headers, and strip can leave them unloadable ("ELF load
# command address/offset not page-aligned", seen with numpy's OpenBLAS).
set -eu
root="${1:?usage: slim_packages.sh DIR}"
command -v strip >/dev/null 2>&1 || { echo "slim_packages.sh: strip (binutils) not found" >&2; exit 1; }
find "$root" -type f \( -name '*.so' -o -name '*.so.*' \) ! -path '*.libs/*' \
    -exec strip --strip-unneeded {} +
