"""Issue 12, item 1: bad regions of either image are masked in every method's difference
and noise map, and no candidate is found there."""

import warnings

import numpy as np
import pytest

from diffgui.app.candidates import find_candidates
from diffgui.engine import run_hotpants, run_sfft, run_zogy
from diffgui.engine.errors import ExecutableError
from diffgui.engine.simulation import simulate_pair


def _has_exe():
    from diffgui.engine import hotpants

    try:
        hotpants.find_executable(None)
        return True
    except ExecutableError:
        return False


METHODS = ["zogy", "sfft", "hotpants-native",
           pytest.param("hotpants-exe", marks=pytest.mark.skipif(not _has_exe(),
                                                                 reason="HOTPANTS executable not installed"))]


@pytest.fixture(scope="module")
def pair():
    return simulate_pair(shape=(192, 192), n_stars=60, transients=4, transient_snr_range=(30, 60), seed=11)


def _region(shape, kind):
    r = np.zeros(shape, bool)
    if kind == "left":
        r[:, :70] = True
    else:                       # a 12-px NaN frame, as reprojected templates have
        r[:12] = r[-12:] = True
        r[:, :12] = r[:, -12:] = True
    return r


def _run(method, img, tmpl, mask, tmask):
    """(difference, noise or None, S_corr or None) as the application gets them."""
    kw = dict(mask=mask, template_mask=tmask, err=True, template_err=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "zogy":
            d, s = run_zogy(img, tmpl, **kw)[:2]
            return d, None, s
        if method == "sfft":
            d, n = run_sfft(img, tmpl, get_noise=True, **kw)
        else:
            d, n = run_hotpants(img, tmpl, get_noise=True, backend=method.split("-")[1], **kw)
    return d, n, None


def _grow(r, n):
    from scipy.ndimage import binary_dilation

    return binary_dilation(r, iterations=n)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["template-nan-left", "template-masked-left", "science-nan-left",
                                  "template-nan-frame"])
def test_bad_region_is_masked_and_holds_no_candidate(pair, method, case):
    img, tmpl = pair.image.copy(), pair.template.copy()
    region = _region(img.shape, "frame" if case.endswith("frame") else "left")
    mask = tmask = None
    if case.startswith("template-nan"):
        tmpl[region] = np.nan
    elif case == "template-masked-left":
        tmask = region
    else:
        img[region] = np.nan
    d, n, s = _run(method, img, tmpl, mask, tmask)
    assert np.all(np.isfinite(d))
    # Masked: the difference holds its fill value (0, or HOTPANTS's 1e-30) ...
    assert np.max(np.abs(d[region])) < 1e-20, f"difference not masked: median {np.median(np.abs(d[region])):.3g}"
    # ... and so does the noise map (0) or S_corr (0).
    if n is not None:
        assert np.all(n[region] == 0)
    if s is not None:
        assert np.all(s[region] == 0)
    # The application finds no candidate in the region or the kernel-wide band around it,
    # with nothing but the method's outputs to go by (no masks passed).
    cset = find_candidates(d, noise=n, scorr=s, image=img, template=tmpl, fwhm=3.0)
    x = np.clip(np.round(np.asarray(cset.table["x"], float)).astype(int), 0, img.shape[1] - 1)
    y = np.clip(np.round(np.asarray(cset.table["y"], float)).astype(int), 0, img.shape[0] - 1)
    near = _grow(region, 4)[y, x]
    assert not near.any(), f"{int(near.sum())} of {len(cset)} candidates in the bad region"
    assert len(cset) >= 2          # the transients outside are still found
