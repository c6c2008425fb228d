"""Noise maps and masks given as files (with [HDU]/[EXTNAME]): the CLI, load_pair, the
Open pair dialog and the window, and their record in the results' provenance."""

import numpy as np
import pytest
from astropy.io import fits

from diffgui import cli
from diffgui.app.pair import load_pair
from diffgui.engine.errors import InputError
from shared_paths import DATA

JWST = DATA / "jwst-nircam-a2744"
CROP = (slice(300, 556), slice(300, 556))


@pytest.fixture(scope="module")
def jwst_files(tmp_path_factory):
    """A 256 x 256 crop of the JWST pair, its noise maps and a mask, as files."""
    if not (JWST / "science.fits").exists():
        pytest.skip("shared data not found")
    folder = tmp_path_factory.mktemp("jwst")
    out = {}
    for key, name in (("science", "science"), ("template", "template"), ("err", "science_noise"),
                      ("template_err", "template_noise")):
        with fits.open(JWST / f"{name}.fits") as h:
            hdu = h[0] if h[0].data is not None else h[1]
            path = folder / f"{name}.fits"
            fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(hdu.data[CROP], name=hdu.name or "SCI")]).writeto(path)
            out[key] = f"{path}[{hdu.name or 'SCI'}]"
    mask = np.zeros((256, 256), np.uint8)
    mask[10:20, 10:20] = 1
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(mask, name="BPM")]).writeto(folder / "mask.fits")
    out["mask"] = f"{folder / 'mask.fits'}[1]"
    return out


def test_load_pair_reads_the_maps_and_records_them(jwst_files):
    f = jwst_files
    pair = load_pair(f["science"], f["template"], err=f["err"], template_err=f["template_err"], mask=f["mask"])
    with fits.open(JWST / "science_noise.fits") as h:
        np.testing.assert_array_equal(pair.err, h[0 if h[0].data is not None else 1].data[CROP].astype(float))
    assert pair.mask[15, 15] and not pair.mask[100, 100]
    d = pair.describe()
    assert d["err_path"] == f["err"] and d["mask_path"] == f["mask"] and "template_mask_path" not in d


def test_a_map_of_another_shape_is_refused(jwst_files, tmp_path):
    small = tmp_path / "small.fits"
    fits.PrimaryHDU(np.ones((10, 10), np.float32)).writeto(small)
    with pytest.raises(InputError, match="same pixel grid"):
        load_pair(jwst_files["science"], jwst_files["template"], err=str(small))


def test_cli_run_with_map_files(jwst_files, tmp_path):
    f = jwst_files
    out = tmp_path / "out.fits"
    rc = cli.main(["run", "--method", "sfft", f["science"], f["template"], "-o", str(out), "-q",
                   "--err", f["err"], "--template-err", f["template_err"], "--mask", f["mask"]])
    assert rc == 0
    with fits.open(out) as h:
        hdr = h[0].header
        assert hdr["DGERR"] == "science_noise.fits[ERR]" and hdr["DGTERR"] == "template_noise.fits[ERR]"
        assert hdr["DGMASK"] == "mask.fits[1]" and "DGTMASK" not in hdr
        noise = h["NOISE"].data
    # the difference noise comes from the given maps (MJy/sr, ~1e-2), not from a gain model
    with fits.open(f["err"].split("[")[0]) as h:
        given = np.median(h[1].data)
    assert 1.0 <= np.median(noise) / given < 3.0
    bad = tmp_path / "bad.fits"
    assert cli.main(["run", "--method", "sfft", f["science"], f["template"], "-o", str(bad), "-q",
                     "--err", str(tmp_path / "missing.fits")]) == 2


def test_open_pair_dialog_and_window(qtbot, window, jwst_files):
    from diffgui.gui.open_pair_dialog import OpenPairDialog

    dialog = OpenPairDialog()
    qtbot.addWidget(dialog)
    dialog.edits["science"].setText(jwst_files["science"])
    dialog._accept()
    assert "template" in dialog.message.text().lower() and not dialog.result()
    for key in ("template", "err", "mask"):
        dialog.edits[key].setText(jwst_files[key])
    values = dialog.values()
    assert set(values) == {"science", "template", "err", "mask"}
    sci, tmpl = values.pop("science"), values.pop("template")
    assert window.open_pair(sci, tmpl, **values)
    assert window.pair.err is not None and window.pair.describe()["err_path"] == jwst_files["err"]


def test_window_warns_on_a_misaligned_pair(qtbot, window, tmp_path):
    from diffgui.engine.simulation import simulate_pair

    sim = simulate_pair(shape=(256, 256), template_shift=(2.5, -1.0), transients=0, seed=8)
    paths = []
    for name, arr in (("s.fits", sim.image), ("t.fits", sim.template)):
        fits.PrimaryHDU(arr.astype(np.float32)).writeto(tmp_path / name)
        paths.append(str(tmp_path / name))
    assert window.open_pair(*paths)
    text = window.log_view.toPlainText()
    assert "WARNING: science is shifted by (-2.5" in text
    assert "science is shifted" in window.statusBar().currentMessage()


def test_form_values_name_map_files(jwst_files):
    from diffgui.app.run import Run
    from diffgui.engine import params

    f = jwst_files
    values = params.validate("sfft", params.coerce_texts("sfft", {"err": f["err"], "template_err": f["template_err"],
                                                                   "mask": f["mask"]}))
    assert values["err"] == f["err"]
    plain = load_pair(f["science"], f["template"])
    run = Run("sfft", values).execute(plain, score=False)
    given = load_pair(f["science"], f["template"], err=f["err"], template_err=f["template_err"], mask=f["mask"])
    ref = Run("sfft", {}).execute(given, score=False)
    np.testing.assert_array_equal(run.results["diff"], ref.results["diff"])
    assert run.provenance["pair"]["err_path"] == f["err"]
    with pytest.raises(params.ParamError, match="FITS file name"):
        params.coerce_texts("sfft", {"err": "noise.txt"})


def test_batch_takes_the_template_maps(jwst_files, tmp_path):
    f = jwst_files
    out = tmp_path / "out"
    rc = cli.main(["batch", "--method", "sfft", "--template", f["template"], f["science"], "-o", str(out),
                   "--backend", "serial", "--template-err", f["template_err"], "--err", f["err"]])
    assert rc == 0
    (result,) = list(out.glob("*.fits"))
    with fits.open(result) as h:
        assert h[0].header["DGTERR"] == "template_noise.fits[ERR]" and h[0].header["DGERR"] == "science_noise.fits[ERR]"
    two = cli.main(["batch", "--method", "sfft", "--template", f["template"], f["science"], f["err"],
                    "-o", str(tmp_path / "o2"), "--backend", "serial", "--err", f["err"]])
    assert two == 2
