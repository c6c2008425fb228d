"""Issue 12, item 8: label files keep labels of other tools, and stores sharing a file lose nothing."""

import csv
import multiprocessing as mp

import pytest
from astropy.table import Table

from diffgui.app.labels import LabelStore, export_regions, read_labels


def _write_foreign(path):
    """A label file from another tool: unknown labels and an extra column."""
    rows = [("c1", "real", "1.0"), ("c2", "bogus_subtract", "2.0"), ("c3", "Real", "3.0"),
            ("c4", "maybe later", "4.0")]
    if str(path).endswith(".csv"):
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["key", "label", "x", "reviewer_note"])
            for k, lab, x in rows:
                w.writerow([k, lab, x, f"note {k}"])
    else:
        t = Table(rows=[(k, lab, float(x), f"note {k}") for k, lab, x in rows],
                  names=["key", "label", "x", "reviewer_note"])
        t.write(path, format="ascii.ecsv")


@pytest.mark.parametrize("ext", [".ecsv", ".csv"])
def test_unknown_labels_survive_load_and_save(tmp_path, ext):
    path = tmp_path / f"labels{ext}"
    _write_foreign(path)
    store = LabelStore(path, user="me")
    assert store.label("c2") == "bogus_subtract" and store.label("c3") == "Real"   # shown as they are
    assert store.counts()["real"] == 1 and store.counts()["bogus_subtract"] == 1
    store.set("c5", "bogus")
    store.set("c1", "skip")
    again = read_labels(path)
    assert {k: r["label"] for k, r in again.items()} == {
        "c1": "skip", "c2": "bogus_subtract", "c3": "Real", "c4": "maybe later", "c5": "bogus"}
    assert again["c3"]["reviewer_note"] == "note c3"          # extra columns kept too
    assert again["c2"]["x"] == pytest.approx(2.0)
    export_regions(tmp_path / "r.reg", _Source(["c1", "c2"]), store)   # no KeyError on unknown labels


class _Source:
    def __init__(self, keys):
        self._keys = keys
        self.table = Table({"x": [1.0] * len(keys), "y": [2.0] * len(keys)})
        self.meta = {}

    def __len__(self):
        return len(self._keys)

    def key(self, i):
        return self._keys[i]

    def position(self, i):
        return (1.0, 2.0)


@pytest.mark.parametrize("ext", [".ecsv", ".csv"])
def test_two_stores_on_one_file_lose_nothing(tmp_path, ext):
    path = tmp_path / f"labels{ext}"
    a, b = LabelStore(path, user="a"), LabelStore(path, user="b")
    for i in range(10):                               # interleaved writes of two windows
        a.set(f"a{i}", "real")
        b.set(f"b{i}", "bogus")
    a.set("shared", "real")
    b.set("shared", "skip")                           # the later change wins
    a.set("a0", None)                                 # a removal is not undone by b's next write
    b.set("b9", "real")
    on_disk = {k: r["label"] for k, r in read_labels(path).items()}
    assert on_disk == {**{f"a{i}": "real" for i in range(1, 10)},
                       **{f"b{i}": "bogus" for i in range(9)}, "b9": "real", "shared": "skip"}
    a.reload()
    assert a.label("b3") == "bogus" and a.label("shared") == "skip" and a.label("a0") is None
    assert b.undo() == "b9" and read_labels(path)["b9"]["label"] == "bogus"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # no lock or temporary files


def _label_many(path, who, n, start):
    start.wait()
    store = LabelStore(path, user=who)
    for i in range(n):
        store.set(f"{who}{i}", "real")


def test_two_processes_on_one_file_lose_nothing(tmp_path):
    path = str(tmp_path / "labels.ecsv")
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_label_many, args=(path, who, 25, start)) for who in ("p", "q")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    keys = set(read_labels(path))
    assert keys == {f"{w}{i}" for w in "pq" for i in range(25)}


def test_vetting_table_shows_unknown_labels_as_they_are(tmp_path, qtbot):
    import numpy as np
    from PyQt6 import QtCore

    from diffgui.app import candidates as C
    from diffgui.gui.candidate_table import CandidateTableModel

    yy, xx = np.mgrid[:120, :120]
    diff = np.random.default_rng(4).normal(0, 1, (120, 120)) \
        + 900 / (2 * np.pi * 1.3 ** 2) * np.exp(-((xx - 30) ** 2 + (yy - 40) ** 2) / (2 * 1.3 ** 2))
    cset = C.find_candidates(diff, fwhm=3.0)
    assert len(cset) >= 1
    path = tmp_path / "labels.csv"
    with open(path, "w") as fh:
        fh.write(f"key,label\n{cset.key(0)},bogus_subtract\n")
    model = CandidateTableModel()
    model.set_source(cset, LabelStore(path))
    idx = model.index(0, model.columns.index("label"))
    assert model.data(idx, QtCore.Qt.ItemDataRole.DisplayRole) == "bogus_subtract"
    assert model.data(idx, QtCore.Qt.ItemDataRole.BackgroundRole) is None      # no colour, no KeyError
