#!/usr/bin/env bash
# Build the one-folder frozen application with PyInstaller, without a display.
#
#   packaging/build.sh [DIST]        (default: dist/ in the repository; the app is DIST/diffgui/diffgui)
#
# PyInstaller is not a dependency of diffgui: install it in a virtual environment of its own,
#   python3 -m venv --system-site-packages /tmp/pyi && /tmp/pyi/bin/pip install pyinstaller
# and point PYINSTALLER at it (default: `pyinstaller` on PATH):
#   PYINSTALLER=/tmp/pyi/bin/pyinstaller packaging/build.sh
# Prints the build time and the size (goal: under 250 MB) and writes them to DIST/build-info.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIST="$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)"
WORK="${WORK:-$ROOT/build/pyinstaller}"
PYI="${PYINSTALLER:-pyinstaller}"
if ! command -v "$PYI" >/dev/null 2>&1; then
    echo "build.sh: '$PYI' not found. Install PyInstaller in a virtual environment, e.g." >&2
    echo "  python3 -m venv --system-site-packages /tmp/pyi && /tmp/pyi/bin/pip install pyinstaller" >&2
    echo "  PYINSTALLER=/tmp/pyi/bin/pyinstaller $0" >&2
    exit 2
fi
# Collecting Qt and pyqtgraph imports them; with no display Qt would abort (exit -6).
export QT_QPA_PLATFORM=offscreen
unset DISPLAY WAYLAND_DISPLAY || true

t0=$(date +%s.%N)
nice -n 10 "$PYI" --noconfirm --clean --log-level WARN --distpath "$DIST" --workpath "$WORK" \
    "$ROOT/packaging/diffgui.spec"
APP="$DIST/diffgui"
# Symbols: about 45 MB. The libraries that wheels carry in <pkg>.libs/ (OpenBLAS of numpy and
# scipy, FFTW) are patched by auditwheel and break when stripped ("ELF load command address/offset
# not page-aligned"), so they are left alone (PyInstaller's own strip option strips them too).
if command -v strip >/dev/null 2>&1; then
    find "$APP/_internal" -type f -name "*.so*" ! -path "*.libs/*" -exec strip {} + 2>/dev/null || true
fi
t1=$(date +%s.%N)
size_mb=$(du -sm "$APP" | cut -f1)
files=$(find "$APP" -type f | wc -l)
version=$("$APP/diffgui" --version)
build_s=$(python3 -c "print(f'{$t1 - $t0:.0f}')")
{
    echo "version: $version"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(nproc) cores"
    echo "build time: ${build_s} s"
    echo "size: ${size_mb} MB in ${files} files"
} | tee "$DIST/build-info.txt"
echo "largest parts:"
du -sm "$APP"/_internal/* 2>/dev/null | sort -rn | head -8 || true
if [ "$size_mb" -ge 250 ]; then
    echo "build.sh: WARNING: ${size_mb} MB is above the 250 MB goal" >&2
fi
echo "application: $APP/diffgui"
