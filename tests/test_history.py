"""Run history and A/B comparison through the application model (no Qt)."""

import csv
import io
import os

import numpy as np
import pytest

from diffgui.app.history import RunHistory, compare
from diffgui.app.run import Run
from diffgui.engine.errors import InputError


def _run(method, params, value, peak_median=0.7):
    r = Run(method=method, params=params)
    r.results = {"diff": np.full((50, 60), float(value)), "kernel": np.ones((5, 5))}
    r.timings["total"] = 1.5
    r.status = "done"
    r.quality = {"metrics": {"robust_std": 1.0, "peak_median": peak_median, "peak_p95": 2.0,
                             "flux_left": 0.0, "background_left": 0.05, "candidates_per_mpix": 1.0,
                             "kernel_sum": 1.2, "kernel_sum_spread": 0.01},
                 "flagged": [] if peak_median <= 1 else ["peak_median"], "n_stars": 40}
    return r


def test_changes_memory_bound_and_reload(tmp_path):
    h = RunHistory(keep_in_memory=2, cache_root=str(tmp_path))
    runs = [_run("hotpants", {"extra": {"ko": k}}, k, peak_median=1.8 - 0.5 * k) for k in range(4)]
    runs.append(_run("sfft", {}, 9))
    for r in runs:
        h.add(r)
    assert h.add(runs[-1]) is h.entries[-1] and len(h) == 5  # the same run is not added twice
    assert h.entries[0].changes == {} and h.entries[1].changes == {"ko": 1}
    assert h.entries[1].changes_text() == "ko=1" and h.entries[4].changes == {"method": "sfft"}
    per_run = 50 * 60 * 8 + 5 * 5 * 8
    assert h.in_memory_bytes() == 2 * per_run
    assert "diff" not in runs[0].results and "kernel" not in runs[0].results
    assert os.path.isdir(h.cache_dir) and len(os.listdir(h.cache_dir)) == 3 * 2
    back = h.run(h.index_of(runs[0].run_id))
    assert back is runs[0] and np.all(back.results["diff"] == 0.0)
    assert h.in_memory_bytes() == 2 * per_run  # another run went to disk instead
    h.delete(h.index_of(runs[1].run_id))
    assert len(h) == 4 and len(os.listdir(h.cache_dir)) == 2 * 2
    cache = h.cache_dir
    h.close()
    assert not os.path.exists(cache)
    with pytest.raises(InputError):
        h.index_of(12345)
    with pytest.raises(InputError):
        RunHistory(keep_in_memory=0)


def test_export_csv(tmp_path):
    h = RunHistory()
    h.add(_run("zogy", {"nx": 1}, 0, 1.5))
    h.add(_run("zogy", {"nx": 3}, 0, 0.64))
    out = h.export_csv(tmp_path / "h.csv")
    rows = list(csv.DictReader(io.StringIO(open(out).read())))
    assert [r["changes"] for r in rows] == ["(same settings)", "nx=3"]
    assert float(rows[1]["peak_median"]) == 0.64 and rows[0]["flagged"] == "peak_median"
    with pytest.raises(FileExistsError):
        h.export_csv(tmp_path / "h.csv")
    h.close()


def test_compare_marks_changes_and_the_better_run():
    a, b = _run("hotpants", {}, 0, 1.8), _run("hotpants", {}, 0, 0.7)
    rows = {r.key: r for r in compare(a.quality, b.quality)}
    assert rows["peak_median"].changed and rows["peak_median"].better == "b"
    assert not rows["robust_std"].changed and rows["robust_std"].better == ""
    assert rows["kernel_sum"].better == ""  # no ideal value
    assert all(r.ideal for r in rows.values())
