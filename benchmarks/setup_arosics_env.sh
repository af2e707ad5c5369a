#!/usr/bin/env bash
# Set up .venv-bench: a separate virtual environment with AROSICS (GFZ's co-registration tool) and
# changedet installed side by side, for the co-registration baseline benchmark
# (benchmarks/_arosics.py). Nothing here touches the project's .venv or its runtime dependencies.
#
# AROSICS needs GDAL's Python bindings ("osgeo"). PyPI ships those only as source, so they are
# built against the system libgdal (Debian: libgdal-dev), pinned to exactly that libgdal's version.
#
# Usage:  bash benchmarks/setup_arosics_env.sh           (from anywhere; idempotent)
#         FORCE=1 bash benchmarks/setup_arosics_env.sh   (rebuild from scratch)
# Env:    PYTHON (default python3), BENCH_VENV (default <repo>/.venv-bench)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${BENCH_VENV:-$REPO/.venv-bench}"
STAMP="$VENV/.arosics-installed"
# Bump when this script's install recipe changes, so old venvs get re-installed.
RECIPE=2
# The stamp also records pyproject.toml's hash: a changed pyproject re-installs changedet (and
# re-checks arosics); the GDAL build is skipped when the bindings already import.
PYPROJECT_SHA="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"

say() { printf '[bench-env] %s\n' "$*"; }
die() { printf '[bench-env] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -f "$STAMP" && "${FORCE:-0}" != 1 ]] && grep -qx "recipe=$RECIPE" "$STAMP" \
   && grep -qx "pyproject=$PYPROJECT_SHA" "$STAMP" \
   && "$VENV/bin/python" -c 'import arosics, osgeo.gdal, changedet' 2>/dev/null; then
  say "already set up: $VENV ($(tr '\n' ' ' < "$STAMP")); FORCE=1 to rebuild"
  exit 0
fi
START=$SECONDS

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "need Python 3.10+ (PYTHON=$PYTHON is $("$PYTHON" -V 2>&1))"

# 1. System GDAL + headers (gdal-config). Installed with apt when root, else we say what to do.
if ! command -v gdal-config >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing libgdal-dev with apt-get (system GDAL library + headers + gdal-config)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends libgdal-dev g++ >/dev/null
  else
    die "gdal-config not found. Install GDAL's development files first, e.g.
    Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y libgdal-dev g++
    Fedora:         sudo dnf install gdal-devel gcc-c++
    macOS:          brew install gdal
  then re-run this script."
  fi
fi
GDAL_VERSION="$(gdal-config --version)"
say "system GDAL $GDAL_VERSION"

# 2. The venv. GDAL's Python bindings for GDAL < 3.9 do not build against numpy 2, so numpy is
#    held below 2 there (the project accepts numpy>=1.24). arosics >= 1.13 needs py_tools_ds
#    >= 0.23.2, which needs GDAL >= 3.8; holding arosics < 1.13 on an older GDAL (Debian 12 has
#    3.6.2) spares pip minutes of backtracking through py_tools_ds source releases.
if [[ "${FORCE:-0}" == 1 ]]; then rm -rf "$VENV"; fi
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# pip, quiet, minus the "Location ... is ignored" lines some pip configs (a find-links or index
# folder that does not exist) print for every package.
pip_() {
  "$PY" -m pip --disable-pip-version-check --quiet "$@" \
    2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}

CONSTRAINTS="$VENV/constraints-arosics.txt"
{
  echo "gdal==$GDAL_VERSION"
  "$PY" - "$GDAL_VERSION" <<'EOF'
import sys
major, minor = (int(x) for x in sys.argv[1].split(".")[:2])
if (major, minor) < (3, 9):
    print("numpy<2")
if (major, minor) < (3, 8):
    print("arosics<1.13")
EOF
} > "$CONSTRAINTS"
say "constraints: $(tr '\n' ' ' < "$CONSTRAINTS")"

say "installing build prerequisites (pip, setuptools, wheel, numpy)"
pip_ install --upgrade pip setuptools wheel
pip_ install -c "$CONSTRAINTS" numpy

# 3. GDAL bindings, built against that numpy (no build isolation, so gdal_array gets numpy).
if ! "$PY" -c 'from osgeo import gdal_array' 2>/dev/null; then
  say "building GDAL $GDAL_VERSION Python bindings from source (a few minutes)"
  pip_ install --no-build-isolation --no-cache-dir -c "$CONSTRAINTS" "gdal==$GDAL_VERSION"
fi
"$PY" -c 'from osgeo import gdal, gdal_array; print("[bench-env] osgeo.gdal", gdal.__version__, "with numpy support")'

# 4. AROSICS (held to the same GDAL) and changedet itself (editable, so benchmarks import both).
say "installing arosics"
pip_ install -c "$CONSTRAINTS" arosics
say "installing changedet (editable) from $REPO"
pip_ install -c "$CONSTRAINTS" -e "$REPO"

"$PY" - <<'EOF'
import arosics, numpy, changedet
from osgeo import gdal
print(f"[bench-env] arosics {arosics.__version__}, GDAL {gdal.__version__}, numpy {numpy.__version__}, changedet OK")
EOF

{
  echo "recipe=$RECIPE"
  echo "pyproject=$PYPROJECT_SHA"
  echo "gdal=$GDAL_VERSION"
  echo "arosics=$("$PY" -c 'import arosics; print(arosics.__version__)')"
} > "$STAMP"
say "done in $((SECONDS - START)) s: $VENV (use $VENV/bin/python benchmarks/...)"
