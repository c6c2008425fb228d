#!/usr/bin/env bash
# Smoke test of the frozen application built by packaging/build.sh (no display needed).
#
#   packaging/smoke.sh [DIST] [OUT]    (defaults: dist/ in the repository; OUT a new folder in /tmp)
#
# 1. first window: `diffgui --demo --screenshot` (time to the first window on screen);
# 2. the demo pair with each method: `--run --screenshot`, screenshots checked (PNG, not blank);
# 3. a real pair from the shared data (pyDIA bulge pair 0102 vs 0001) in the window, `--run --screenshot`;
# 4. `diffgui run` on that pair with each method, frozen and with the installed package
#    (python3 -m diffgui), and the two DIFF images compared bit for bit; the frozen results
#    file is read back with diffgui.app.results_io.load_run.
# Prints one line per check and the first-window time; exits non-zero on the first failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIST="${1:-$ROOT/dist}"
OUT="${2:-$(mktemp -d /tmp/diffgui-smoke.XXXXXX)}"
APP="$DIST/diffgui/diffgui"
PY="${PYTHON:-python3}"
export QT_QPA_PLATFORM=offscreen
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
[ -x "$APP" ] || { echo "smoke.sh: no application at $APP: run packaging/build.sh first" >&2; exit 2; }
SHARED="${DIFFGUI_SHARED:-$ROOT/../shared}"
[ -d "$SHARED/data" ] || SHARED=/work/shared
SCI="$SHARED/data/pydia-bulge-kb13475/pairs/0102_vs_0001_sci.fits"   # registered crowded pair, 512 x 512
TMPL="$SHARED/data/pydia-bulge-kb13475/pairs/0102_vs_0001_ref.fits"
METHODS="${METHODS:-zogy sfft hotpants}"

check_png() {  # PNG, at least 600x400, and not one flat colour
    "$PY" - "$1" <<'PYEOF'
import sys
from PyQt6.QtGui import QGuiApplication, QImage
app = QGuiApplication([])
img = QImage(sys.argv[1])
assert not img.isNull(), f"{sys.argv[1]}: not an image"
w, h = img.width(), img.height()
assert w >= 600 and h >= 400, f"{sys.argv[1]}: only {w}x{h}"
colours = {img.pixel(x, y) for x in range(0, w, 7) for y in range(0, h, 7)}
assert len(colours) > 50, f"{sys.argv[1]}: nearly blank ({len(colours)} colours)"
print(f"ok   {sys.argv[1]} ({w}x{h}, {len(colours)} colours)")
PYEOF
}

echo "app: $APP ($("$APP" --version)); output in $OUT"
t0=$(date +%s.%N)
"$APP" --demo --screenshot "$OUT/first-window.png" --size 1400x900 > "$OUT/first-window.log" 2>&1
t1=$(date +%s.%N)
check_png "$OUT/first-window.png"
first=$("$PY" -c "print(f'{$t1 - $t0:.2f}')")
echo "first window (start to screenshot written): ${first} s"
echo "first window: ${first} s" > "$OUT/figures.txt"

for m in $METHODS; do
    ts=$(date +%s.%N)
    "$APP" --demo --method "$m" --run --screenshot "$OUT/demo-$m.png" --size 1400x900 > "$OUT/demo-$m.log" 2>&1 \
        || { echo "FAIL demo $m:"; tail -20 "$OUT/demo-$m.log"; exit 1; }
    te=$(date +%s.%N)
    check_png "$OUT/demo-$m.png"
    echo "demo $m run + screenshot: $("$PY" -c "print(f'{$te - $ts:.1f}')") s" | tee -a "$OUT/figures.txt"
done

if [ ! -f "$SCI" ]; then
    echo "skip real pair: $SCI not found (set DIFFGUI_SHARED)"
    exit 0
fi
"$APP" "$SCI" "$TMPL" --method zogy --run --screenshot "$OUT/real-zogy.png" --size 1400x900 \
    > "$OUT/real-zogy.log" 2>&1 || { echo "FAIL real pair in the window:"; tail -20 "$OUT/real-zogy.log"; exit 1; }
check_png "$OUT/real-zogy.png"

for m in $METHODS; do
    "$APP" run --method "$m" "$SCI" "$TMPL" -o "$OUT/frozen-$m.fits" --candidates "$OUT/frozen-$m.csv" -q \
        2> "$OUT/frozen-$m.log" || { echo "FAIL frozen run $m:"; tail -20 "$OUT/frozen-$m.log"; exit 1; }
    "$PY" -m diffgui run --method "$m" "$SCI" "$TMPL" -o "$OUT/package-$m.fits" -q 2> "$OUT/package-$m.log" \
        || { echo "FAIL package run $m:"; tail -20 "$OUT/package-$m.log"; exit 1; }
    "$PY" - "$OUT/frozen-$m.fits" "$OUT/package-$m.fits" "$OUT/frozen-$m.csv" <<'PYEOF'
import sys
import numpy as np
from astropy.io import fits
from diffgui.app.results_io import load_run
frozen, package, csv = sys.argv[1:4]
run = load_run(frozen)
assert run.status == "done" and run.results["diff"].shape == fits.getdata(package, "DIFF").shape, run.status
a, b = fits.getdata(frozen, "DIFF"), fits.getdata(package, "DIFF")
same = a.tobytes() == b.tobytes()
assert same, f"DIFF differs: max |frozen - package| = {np.nanmax(np.abs(a - b))}"
ncand = sum(1 for line in open(csv) if line.strip() and not line.startswith("#")) - 1
print(f"ok   {run.method}: frozen DIFF == package DIFF bit for bit ({a.size} pixels), {ncand} candidates")
PYEOF
done
echo "smoke test passed; screenshots and results in $OUT"
