"""The three methods through the public API: stdpipe's return conventions, FITS-like
inputs (big-endian, integer) and one clear error for each kind of bad input."""

import numpy as np
import pytest

from diffgui.engine import InputError, run_hotpants, run_sfft, run_zogy
from diffgui.engine.simulation import simulate_pair


@pytest.fixture(scope="module")
def pair():
    return simulate_pair(shape=(192, 192), n_stars=60, transients=0, seed=21)


def _run(method, image, template, **kw):
    if method == "zogy":
        return run_zogy(image, template, image_gain=2.0, template_gain=10.0, **kw)
    if method == "sfft":
        return run_sfft(image, template, err=True, template_err=True, image_gain=2.0,
                        template_gain=10.0, kernel_poly_order=0, bg_poly_order=1,
                        flux_poly_order=0, **kw)
    return run_hotpants(image, template, err=True, template_err=True, image_gain=2.0,
                        template_gain=10.0, image_fwhm=3.5, template_fwhm=2.5,
                        backend="native", **kw)


@pytest.mark.parametrize("method", ["zogy", "sfft", "hotpants"])
def test_big_endian_integer_inputs_give_native_float_output(pair, method):
    img = np.round(pair.image).astype(">i4")
    tmpl = np.round(pair.template).astype(">i4")
    out = _run(method, img, tmpl)
    diff = out[0] if isinstance(out, list) else out
    assert diff.shape == img.shape and diff.dtype.kind == "f" and diff.dtype.isnative
    assert np.isfinite(diff).mean() > 0.9
    ref = _run(method, pair.image, pair.template)
    ref = ref[0] if isinstance(ref, list) else ref
    # Rounding to integers changes the data by at most 0.5 ADU: the difference barely moves.
    good = np.isfinite(diff) & np.isfinite(ref)
    assert np.median(np.abs(diff[good] - ref[good])) < 0.5 * np.median(np.abs(ref[good]))


@pytest.mark.parametrize("method", ["zogy", "sfft", "hotpants"])
def test_return_conventions(pair, method):
    if method == "zogy":
        out = run_zogy(pair.image, pair.template, image_gain=2.0, template_gain=10.0,
                       get_psf=True, get_Fpsf=True)
        assert isinstance(out, list) and len(out) == 5
        assert abs(out[2].sum() - 1) < 1e-6  # P_D sums to 1
    else:
        bare = _run(method, pair.image, pair.template)
        assert isinstance(bare, np.ndarray)
        out = _run(method, pair.image, pair.template, get_convolved=True, get_scaled=True,
                   get_noise=True, get_kernel=True)
        assert isinstance(out, list) and len(out) == 5
        diff, conv, scaled, noise = out[:4]
        assert conv.shape == scaled.shape == noise.shape == diff.shape
        ok = (noise > 0) & np.isfinite(noise) & (scaled != 0)
        assert np.allclose(scaled[ok], diff[ok] / noise[ok], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["zogy", "sfft", "hotpants"])
@pytest.mark.parametrize("case, words", [
    ("shape", "same shape"),
    ("nan", "no finite pixels"),
    ("cube", "2-D"),
    ("masked", "masked"),
])
def test_bad_input_gets_a_clear_error(pair, method, case, words):
    img, tmpl = pair.image, pair.template
    kw = {}
    if case == "shape":
        tmpl = tmpl[:, :-3]
    elif case == "nan":
        img = np.full_like(img, np.nan)
    elif case == "cube":
        img = np.stack([img, img])
    elif case == "masked":
        kw["mask"] = np.ones(img.shape, bool)
    with pytest.raises(InputError, match=words):
        _run(method, img, tmpl, **kw)
