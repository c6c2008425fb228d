"""Cutout collections: the alert triplets (ZTF, Rubin), MeerLICHT npz files, folders of FITS cutouts."""

import os

import numpy as np
import pytest
from astropy.io import fits

from diffgui.app import candidates as C
from diffgui.app.collections import collection_labels_path, load_npz, open_collection
from diffgui.engine.errors import InputError
from shared_paths import DATA as SHARED_DATA

DATA = str(SHARED_DATA)
ZTF = f"{DATA}/alert-triplets/ztf_triplets_63x63.npz"
RUBIN = f"{DATA}/alert-triplets/rubin_triplets_30x30.npz"
MEERLICHT = f"{DATA}/meerlicht-vetting"
needs_data = pytest.mark.skipif(not os.path.exists(ZTF), reason="shared alert-triplet data not present")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUI_DATA_DIR", str(tmp_path / "userdata"))


@needs_data
def test_ztf_triplets_load_with_their_scores():
    c = open_collection(ZTF)
    raw = np.load(ZTF)
    assert len(c) == 400 and c.roles == ("science", "template", "diff") and c.stamp_shape == (63, 63)
    assert c.score_column == "drb"
    np.testing.assert_array_equal(c.table["drb"], raw["drb"])
    np.testing.assert_array_equal(c.table["rb"], raw["rb"])
    assert c.display_columns[:3] == ("index", "drb", "rb")
    cut = c.cutouts(7)
    np.testing.assert_array_equal(cut["diff"], raw["triplets"][7, 2])
    np.testing.assert_array_equal(cut["template"], raw["triplets"][7, 1])
    assert c.key(0) == str(raw["candid"][0]) and len(set(c.keys())) == 400
    assert c.record(3)["score"] == pytest.approx(float(raw["drb"][3]))
    assert c.position(0) is None


@needs_data
def test_rubin_triplets_load_with_reliability():
    c = open_collection(RUBIN)
    raw = np.load(RUBIN)
    assert len(c) == 301 and c.stamp_shape == (30, 30) and c.score_column == "reliability"
    np.testing.assert_array_equal(c.table["reliability"], raw["reliability"])
    assert c.key(5) == str(raw["diaSourceId"][5])
    rec = c.record(5)
    assert rec["ra"] == pytest.approx(raw["ra"][5]) and rec["snr"] == pytest.approx(float(raw["snr"][5]))


@needs_data
def test_meerlicht_folder_has_scorr_cutouts():
    c = open_collection(MEERLICHT)
    assert len(c) == 4 and c.roles == ("science", "template", "diff", "scorr") and c.stamp_shape == (100, 100)
    one = np.load(f"{MEERLICHT}/{c.key(0)}.npz")
    np.testing.assert_array_equal(c.cutouts(0)["scorr"], one["scorr"])


@needs_data
def test_labels_of_a_read_only_collection_go_to_the_user_folder(tmp_path):
    # a read-only folder of our own (the shared folder may be writable on some machines,
    # and tests never write there): a link to the data in a folder without write bits
    ro = tmp_path / "readonly"
    ro.mkdir()
    ztf = ro / os.path.basename(ZTF)
    ztf.symlink_to(ZTF)
    ro.chmod(0o555)
    try:
        p = collection_labels_path(ztf)
        assert p.startswith(str(tmp_path / "userdata")) and p.endswith(".labels.ecsv")
        c = open_collection(ztf)
        store = C.LabelStore(p)
        store.set(c.key(3), "real", c.record(3))
        again = C.LabelStore(collection_labels_path(ztf))
        again.attach(c)
        assert again.label(c.key(3)) == "real"
        assert again.records[c.key(3)]["score"] == pytest.approx(c.table["drb"][3])
        assert os.listdir(ro) == [ztf.name]
    finally:
        ro.chmod(0o755)


def _stamp(v, shape=(21, 21)):
    return np.full(shape, v, np.float32)


def test_fits_folder_of_named_triplets_with_header_scores(tmp_path):
    for i, rb in enumerate((0.9, 0.2)):
        for suffix, v in (("sci", 1), ("ref", 2), ("diff", 3)):
            hdr = fits.Header()
            if suffix == "sci":
                hdr["RB"] = rb
            fits.PrimaryHDU(_stamp(10 * i + v), header=hdr).writeto(tmp_path / f"cand{i}_{suffix}.fits")
    c = open_collection(tmp_path)
    assert len(c) == 2 and c.roles == ("science", "template", "diff") and c.score_column == "rb"
    assert list(c.table["rb"]) == [0.9, 0.2] and c.keys() == ["cand0", "cand1"]
    assert c.cutouts(1)["template"][0, 0] == 12 and c.cutouts(0)["diff"][0, 0] == 3
    assert collection_labels_path(tmp_path) == str(tmp_path.parent / f"{tmp_path.name}.labels.ecsv")


def test_fits_folder_of_multi_extension_files_and_cubes(tmp_path):
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(_stamp(1), name="SCIENCE"), fits.ImageHDU(_stamp(2), name="TEMPLATE"),
            fits.ImageHDU(_stamp(3), name="DIFF"), fits.ImageHDU(_stamp(4), name="SCORR")]
    hdus[0].header["DRB"] = 0.5
    fits.HDUList(hdus).writeto(tmp_path / "a.fits")
    cube = fits.PrimaryHDU(np.stack([_stamp(5), _stamp(6), _stamp(7), _stamp(8)]))
    cube.header["DRB"] = 0.7
    cube.writeto(tmp_path / "b.fits")
    c = open_collection(tmp_path)
    assert c.roles == ("science", "template", "diff", "scorr") and len(c) == 2
    assert [c.cutouts(i)["scorr"][0, 0] for i in range(2)] == [4, 8]
    assert list(c.table["drb"]) == [0.5, 0.7] and c.score_column == "drb"
    single = open_collection(tmp_path / "a.fits")
    assert len(single) == 1 and single.cutouts(0)["science"][0, 0] == 1


def test_broken_collections_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cutouts"):
        open_collection(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        open_collection(tmp_path / "missing.npz")
    np.savez(tmp_path / "x.npz", other=np.zeros(3))
    with pytest.raises(InputError, match="holds no cutouts.*found other"):
        load_npz(tmp_path / "x.npz")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "t.npz", triplets=np.zeros((2, 5, 8, 8)))
    with pytest.raises(InputError, match="5 cutouts per item"):
        load_npz(tmp_path / "t.npz")
    d = tmp_path / "partial"
    d.mkdir()
    fits.PrimaryHDU(_stamp(1)).writeto(d / "c1_sci.fits")
    fits.PrimaryHDU(_stamp(1)).writeto(d / "c1_diff.fits")
    with pytest.raises(InputError, match="'c1' lacks its template file"):
        open_collection(d)
    d2 = tmp_path / "plain"
    d2.mkdir()
    fits.PrimaryHDU(_stamp(1)).writeto(d2 / "image.fits")
    with pytest.raises(InputError, match="not a cutout triplet"):
        open_collection(d2)
