"""Loading pairs: FITS, .fits.fz, HDU choice, big-endian data, companions, WCS, and clear errors."""

import numpy as np
import pytest
from astropy.io import fits

from diffgui.app.pair import Pair, load_pair, read_fits_image, split_hdu_spec
from diffgui.engine.errors import InputError


def test_big_endian_fits_pair_loads_native(fits_pair, small_pair_arrays):
    pair = load_pair(*fits_pair)
    sci, tmpl = small_pair_arrays
    assert pair.image.dtype == np.float32 and pair.image.dtype.isnative
    assert pair.shape == (64, 64)
    np.testing.assert_allclose(pair.image, sci.astype(np.float32))
    np.testing.assert_allclose(pair.template, tmpl.astype(np.float32))
    assert pair.image_path == fits_pair[0]
    ra, dec = pair.pixel_to_world(31.0, 31.0)  # CRPIX 32 is 1-based
    assert ra == pytest.approx(150.0, abs=1e-9) and dec == pytest.approx(2.0, abs=1e-9)
    ra2, _ = pair.pixel_to_world(41.0, 31.0)
    assert (ra2 - ra) * np.cos(np.radians(2.0)) == pytest.approx(-1e-3, rel=1e-3)


def test_fits_fz_uses_first_image_hdu_and_named_hdus(tmp_path):
    data = np.arange(48 * 40, dtype=np.int16).reshape(48, 40)
    path = tmp_path / "frame.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, name="SCI")]).writeto(path)
    im = read_fits_image(path)
    assert im.hdu == 1 and im.data.dtype == np.float32
    np.testing.assert_array_equal(im.data, data)
    assert read_fits_image(f"{path}[SCI]").hdu == 1
    assert read_fits_image(path, hdu=1).hdu == 1
    with pytest.raises(InputError, match="no HDU named 'ERR'"):
        read_fits_image(path, hdu="ERR")
    with pytest.raises(InputError, match="HDU 7 does not exist"):
        read_fits_image(path, hdu=7)


def test_companion_mask_and_variance_extensions(tmp_path):
    data = np.ones((20, 30))
    mask = np.zeros((20, 30), np.uint8)
    mask[3, 4] = 1
    var = np.full((20, 30), 4.0)
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(data), fits.ImageHDU(mask, name="DQ"),
                  fits.ImageHDU(var, name="VAR")]).writeto(path)
    im = read_fits_image(path)
    assert im.mask.dtype == bool and im.mask.sum() == 1 and im.mask[3, 4]
    np.testing.assert_allclose(im.err, 2.0)
    pair = load_pair(path, path)
    assert pair.mask is not None and pair.err is not None
    assert pair.describe()["has_err"] is True


def test_split_hdu_spec():
    assert split_hdu_spec("a.fits[2]") == ("a.fits", 2)
    assert split_hdu_spec("a.fits[SCI]") == ("a.fits", "SCI")
    assert split_hdu_spec("a.fits") == ("a.fits", None)


def test_not_fits_is_refused(tmp_path):
    p = tmp_path / "notes.fits"
    p.write_text("this is not a FITS file\n")
    with pytest.raises(InputError, match="not a FITS file"):
        read_fits_image(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_fits_image(tmp_path / "nope.fits")
    with pytest.raises(InputError, match="folder"):
        read_fits_image(tmp_path)


def test_cube_is_refused_but_degenerate_axes_are_dropped(tmp_path):
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 16, 16), np.float32)).writeto(cube)
    with pytest.raises(InputError, match="3-D array of shape \\(3, 16, 16\\)"):
        read_fits_image(cube)
    flat = tmp_path / "flat.fits"
    fits.PrimaryHDU(np.ones((1, 1, 16, 16), np.float32)).writeto(flat)
    assert read_fits_image(flat).data.shape == (16, 16)


def test_truncated_file_is_refused(tmp_path, fits_pair):
    raw = open(fits_pair[0], "rb").read()
    p = tmp_path / "truncated.fits"
    p.write_bytes(raw[: 2880 + 1000])
    with pytest.raises(InputError, match="truncated|cannot be read"):
        read_fits_image(p)


def test_no_image_hdu(tmp_path):
    from astropy.table import Table

    p = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(Table({"a": [1, 2]}))]).writeto(p)
    with pytest.raises(InputError, match="no image HDU"):
        read_fits_image(p)


def test_shape_mismatch_names_both_files(tmp_path):
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    fits.PrimaryHDU(np.ones((32, 32))).writeto(a)
    fits.PrimaryHDU(np.ones((32, 40))).writeto(b)
    with pytest.raises(InputError, match=r"different shapes.*a\.fits is 32x32.*b\.fits is 40x32"):
        load_pair(a, b)
    with pytest.raises(InputError, match="different shapes"):
        Pair(np.ones((8, 8)), np.ones((8, 9)))


def test_pair_engine_inputs_and_explicit_maps(small_pair_arrays):
    sci, tmpl = small_pair_arrays
    mask = np.zeros(sci.shape, bool)
    mask[0, 0] = True
    pair = Pair(sci, tmpl, mask=mask, err=np.full(sci.shape, 3.0))
    kw = pair.engine_inputs()
    assert set(kw) == {"image", "template", "mask", "template_mask", "err", "template_err"}
    assert kw["mask"][0, 0] and kw["template_mask"] is None
    assert pair.pixel_to_world(1, 1) is None
    with pytest.raises(InputError, match="err"):
        Pair(sci, tmpl, err=np.zeros(sci.shape))


def test_demo_pair_has_transients():
    from diffgui.app.pair import demo_pair

    pair = demo_pair(1)
    assert pair.shape == (512, 512)
    assert len(pair.truth["transients"]) == 10
    assert pair.err is not None and pair.template_err is not None
