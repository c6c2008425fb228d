"""Registration: star matching, WCS transforms, Lanczos-3 resampling with masks and noise."""

import json

import numpy as np
import pytest
from astropy.io import fits
from shared_paths import DATA

from diffgui.engine.common import registration as R
from diffgui.engine.errors import FitError, InputError

PYDIA = DATA / "pydia-bulge-kb13475"


def star_field(transform=None, shape=(200, 220), n=150, seed=3, fwhm=3.0, noise=2.0):
    """Gaussian stars on a flat sky; with ``transform`` the stars sit at transform(template xy)."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(5, shape[1] - 5, n), rng.uniform(5, shape[0] - 5, n)
    flux = 10 ** rng.uniform(2.5, 4.5, n)
    if transform is not None:
        x, y = transform.apply(x, y)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    s = fwhm / 2.3548
    img = np.full(shape, 100.0)
    for xi, yi, fi in zip(x, y, flux):
        if -10 < xi < shape[1] + 10 and -10 < yi < shape[0] + 10:
            sl = (slice(max(int(yi) - 12, 0), int(yi) + 13), slice(max(int(xi) - 12, 0), int(xi) + 13))
            img[sl] += fi / (2 * np.pi * s * s) * np.exp(-((xx[sl] - xi) ** 2 + (yy[sl] - yi) ** 2) / (2 * s * s))
    return img + rng.normal(0, noise, shape)


def rotation(deg, dx, dy, scale=1.0):
    a = np.radians(deg)
    m = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return R.Transform(m, np.array([dx, dy]))


def test_star_matching_recovers_shift_rotation_and_scale():
    true = rotation(0.8, 7.3, -4.6, 1.004)
    tmpl, sci = star_field(), star_field(true)
    tr = R.find_transform(sci, tmpl)
    assert tr.method == "stars" and tr.n_stars > 40
    xs, ys = np.meshgrid([0, 110, 219], [0, 100, 199])
    got, want = np.array(tr.apply(xs, ys)), np.array(true.apply(xs, ys))
    assert np.abs(got - want).max() < 0.03
    assert abs(tr.rotation - 0.8) < 0.01 and abs(tr.scale - 1.004) < 2e-4
    assert tr.rms < 0.05
    shift = R.find_transform(sci, tmpl, model="shift", initial=R.Transform.shift(7, -5))
    assert np.allclose(shift.matrix, np.eye(2))


def test_matching_refuses_images_without_common_stars():
    with pytest.raises(FitError):
        R.find_transform(star_field(seed=1), star_field(seed=2))
    with pytest.raises(FitError, match="too few stars"):
        R.find_transform(np.random.default_rng(0).normal(0, 1, (64, 64)), star_field(shape=(64, 64)))
    with pytest.raises(InputError, match="model"):
        R.find_transform(star_field(), star_field(), model="projective")


def test_lanczos_resampling_keeps_flux_flat_fields_and_noise_propagation():
    rng = np.random.default_rng(1)
    flat = np.full((60, 70), 5.0)
    tr = rotation(2.0, 3.37, -1.52)
    out, bad, err = R.resample(flat, tr, flat.shape, err=np.full(flat.shape, 2.0))
    assert np.allclose(out[~bad], 5.0, atol=1e-9)
    # variance through the squared weights: below the input for a fractional shift, equal for integer
    assert np.all(err[~bad] < 2.0) and np.all(err[~bad] > 0.7)
    white = rng.normal(0, 2.0, (300, 300))
    o2, b2, e2 = R.resample(white, R.Transform.shift(0.5, 0.5), white.shape, err=np.full(white.shape, 2.0))
    assert np.std(o2[~b2]) == pytest.approx(np.median(e2[~b2]), rel=0.05)
    o3, b3, e3 = R.resample(white, R.Transform.shift(2, -3), white.shape, err=np.full(white.shape, 2.0))
    np.testing.assert_allclose(o3[10:-10, 10:-10], white[7:-13, 12:-8], atol=1e-12)
    np.testing.assert_allclose(e3[~b3], 2.0)
    # a star keeps its flux through a sub-pixel shift and a rotation
    star = star_field(shape=(80, 80), n=1, noise=0.0, seed=5) - 100
    o4, b4, _ = R.resample(star, rotation(1.0, 0.4, 0.3), star.shape)
    assert o4[~b4].sum() == pytest.approx(star.sum(), rel=2e-3)


def test_masks_grow_by_the_footprint_and_edges_are_masked():
    img = np.ones((50, 50))
    mask = np.zeros((50, 50), bool)
    mask[25, 25] = True
    out, bad, _ = R.resample(img, R.Transform.shift(0.5, 0.25), img.shape, mask=mask)
    ys, xs = np.nonzero(bad[10:40, 10:40])
    assert len(ys) == 36  # the 6 x 6 Lanczos-3 footprint around the bad pixel
    _, bad_int, _ = R.resample(img, R.Transform.shift(1, 0), img.shape, mask=mask)
    assert bad_int[10:40, 10:40].sum() == 1  # integer shift: footprint of one pixel
    assert bad_int[:, -1].all() and not bad_int[:, 0].any()
    out, bad, _ = R.resample(np.where(mask, np.nan, img), R.Transform.shift(0.3, 0), img.shape)
    assert bad.any() and np.isnan(out[bad]).all() and np.isfinite(out[~bad]).all()


def test_register_image_uses_wcs_and_records_the_transform():
    sci_hdr = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 100.0, "CRPIX2": 90.0,
                           "CRVAL1": 150.0, "CRVAL2": 2.0, "CDELT1": -2.8e-4, "CDELT2": 2.8e-4, "EXPTIME": 60.0})
    tmp_hdr = sci_hdr.copy()
    tmp_hdr["CRPIX1"], tmp_hdr["CRPIX2"] = 95.0, 92.5
    tr = R.transform_from_wcs(sci_hdr, tmp_hdr, (200, 220))
    assert tr.method == "wcs" and np.allclose(tr.offset, [5.0, -2.5], atol=1e-6)
    assert R.transform_from_wcs(fits.Header(), tmp_hdr, (10, 10)) is None
    sci = star_field(R.Transform.shift(5.0, -2.5))
    reg = R.register_image(sci, star_field(), header=sci_hdr, template_header=tmp_hdr,
                           err=np.full(sci.shape, 2.0))
    assert reg.transform.method == "wcs" and reg.header["REGMETH"] == "wcs"
    assert reg.header["EXPTIME"] == 60.0 and reg.header["CRPIX1"] == 95.0
    assert reg.header["REGDX"] == pytest.approx(5.0) and reg.header["REGINTP"] == "lanczos3"
    resid = reg.image - star_field()
    assert np.std(resid[~reg.mask]) < 3.5  # aligned: only the two noise realisations remain
    assert json.dumps(reg.transform.to_dict())


@pytest.mark.skipif(not PYDIA.is_dir(), reason="shared pyDIA frames not available")
def test_real_frames_register_to_a_few_hundredths_of_a_pixel():
    from diffgui.engine.common.alignment import measure_offset

    load = (lambda n: fits.getdata(PYDIA / "frames" / f"AKB13475I{n:04d}.fits.fz", 1).astype(float))
    tmpl, sci = load(1), load(27)
    tr = R.find_transform(sci, tmpl, mask=sci >= 65000, template_mask=tmpl >= 65000)
    assert tr.n_stars > 150 and tr.rms < 0.15
    out, bad, _ = R.resample(sci, tr, tmpl.shape, mask=sci >= 65000)
    # after registration the cross-correlation finds no offset left
    left = measure_offset(out, tmpl, mask=bad, template_mask=tmpl >= 65000, rotation=False)
    assert abs(left.dx) < 0.05 and abs(left.dy) < 0.05


def test_loose_star_fits_get_a_cross_correlation_touch_up(monkeypatch):
    tmpl = star_field()
    sci = star_field(R.Transform.shift(4.3, -2.7))
    monkeypatch.setattr(R, "REFINE_RMS", -1.0)  # force the touch-up path on a good fit
    reg = R.register_image(sci, tmpl, err=np.full(sci.shape, 2.0))
    assert reg.transform.offset == pytest.approx([4.3, -2.7], abs=0.03)
    assert reg.err is not None and reg.err.shape == tmpl.shape
    bad = R.Transform(np.eye(2), np.array([4.6, -2.4]), "stars", 50, 0.5)
    reg = R.register_image(sci, tmpl, transform=bad)
    assert reg.transform is bad  # a given transform is used as it is
    out, out_mask, out_err = R.resample(sci, bad, tmpl.shape)
    fixed, *_ = R._refine(sci, tmpl, bad, (out, out_mask, out_err), None, None, None)
    assert fixed.offset == pytest.approx([4.3, -2.7], abs=0.06) and "xcorr_refinement" in fixed.extra
