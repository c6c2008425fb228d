"""Tests of bench.metrics: each metric gives the known answer on constructed data."""

import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bench.metrics import (
    false_positives_per_mpix,
    measure,
    median_time,
    normalised_residual,
    psf_photometry,
    recovered_vs_ideal,
    residual_at_stars,
    robust_std,
    source_mask,
    transient_snr,
)
from diffgui.engine.simulation import psf_stamp, simulate_pair


@pytest.fixture(scope="module")
def pair():
    return simulate_pair(shape=(256, 256), n_stars=150, transients=9, transient_snr_range=(8, 60), seed=21)


def test_robust_std():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.5, 200_000)
    assert robust_std(x) == pytest.approx(2.5, rel=0.01)
    x[:1000] = np.nan
    x[1000:3000] = 1e6  # 1 % outliers barely move it
    assert robust_std(x) == pytest.approx(2.5, rel=0.03)
    mask = np.zeros(x.size, bool)
    mask[1000:3000] = True
    assert robust_std(x, mask) == pytest.approx(2.5, rel=0.01)
    assert math.isnan(robust_std([np.nan]))


def test_normalised_residual_pure_noise():
    rng = np.random.default_rng(2)
    sigma = np.linspace(1.0, 20.0, 256)[None, :] * np.ones((256, 1))
    d = rng.normal(0.0, 1.0, sigma.shape) * sigma
    assert normalised_residual(d, sigma) == pytest.approx(1.0, abs=0.03)
    # Wrong noise gives the ratio; masked junk is ignored.
    assert normalised_residual(d, sigma / 2) == pytest.approx(2.0, abs=0.06)
    d[:20] = 1e5
    bad = np.zeros(d.shape, bool)
    bad[:20] = True
    assert normalised_residual(d, sigma, exclude=bad) == pytest.approx(1.0, abs=0.03)
    assert normalised_residual(d, sigma, mask=bad) == pytest.approx(1.0, abs=0.03)
    assert normalised_residual(rng.normal(0, 4.0, (128, 128)), 4.0) == pytest.approx(1.0, abs=0.03)


def _static_difference(pair):
    """Ideal difference without PSF mismatch: science and template noise, transients."""
    tr_layer = np.zeros(pair.image.shape)
    pair._image_psf.render(tr_layer, pair.transients["x"], pair.transients["y"], pair.transients["flux"])
    h, w = pair.image.shape
    s = pair.flux_scale_at(np.arange(w)[None, :], np.arange(h)[:, None])
    return (pair.image - pair.image_model + tr_layer) - s * (pair.template - pair.template_model)


def test_source_mask_truth_and_detected(pair):
    m = source_mask(pair)
    light = pair.image_model - pair.image_background
    assert m[light > pair.image_noise].all()
    assert 0.05 < m.mean() < 0.6
    # Ideal D = I - s T (no PSF matching) is pure noise away from the masked sources.
    h, w = pair.image.shape
    s = pair.flux_scale_at(np.arange(w)[None, :], np.arange(h)[:, None])
    d = (pair.image - pair.image_background) - s * (pair.template - pair.template_background)
    assert normalised_residual(d, pair.difference_noise(), exclude=m) == pytest.approx(1.0, abs=0.03)
    assert normalised_residual(d, pair.difference_noise()) > 1.03  # star residuals without it
    det = source_mask(pair.image, template=pair.template)
    bright = light > 20 * pair.image_noise
    assert det[bright].mean() > 0.99
    assert det.mean() < 0.6


def test_residual_at_stars(pair):
    rng = np.random.default_rng(3)
    noise = pair.image_noise
    d = rng.normal(size=noise.shape) * noise
    r = residual_at_stars(d, noise, pair.stars)
    assert r["n_stars"] > 20  # isolated, unsaturated, inside
    assert r["mean_abs"] == pytest.approx(math.sqrt(2 / math.pi), abs=0.03)
    assert r["scatter"] == pytest.approx(1.0, abs=0.05)
    assert abs(r["flux_left"]) < 0.01
    # Leave 5 % of every star in D.
    left = np.zeros(noise.shape)
    st = pair.stars
    pair._image_psf.render(left, st["x"], st["y"], 0.05 * st["image_flux"])
    r2 = residual_at_stars(left, noise, pair.stars, radius=3 * pair.truth["image_fwhm"])
    assert r2["flux_left"] == pytest.approx(0.05, rel=1e-3)
    assert r2["flux_left_median"] == pytest.approx(0.05, rel=1e-3)
    assert residual_at_stars(d + left, noise, pair.stars)["mean_abs"] > r["mean_abs"] + 0.03
    assert residual_at_stars(d, noise, pair.stars[:0])["n_stars"] == 0


def test_transient_snr_known_flux_on_noise():
    rng = np.random.default_rng(4)
    h = w = 400
    sigma = 10.0
    img = rng.normal(0.0, sigma, (h, w))
    fwhm, flux = 3.0, 1500.0
    xs = np.repeat(np.arange(30, 380, 50), 7) + rng.uniform(-0.5, 0.5, 49)
    ys = np.tile(np.arange(30, 380, 50), 7) + rng.uniform(-0.5, 0.5, 49)

    def psf(x, y):
        return psf_stamp(fwhm, 19, dx=x - round(x), dy=y - round(y))

    for x, y in zip(xs, ys):
        ix, iy = int(round(x)), int(round(y))
        img[iy - 9:iy + 10, ix - 9:ix + 10] += flux * psf(x, y)
    expect = flux * math.sqrt(np.sum(psf_stamp(fwhm, 19) ** 2)) / sigma
    res = transient_snr(img, sigma, psf, xs, ys)
    assert np.mean(res["snr"]) == pytest.approx(expect, abs=0.5)
    assert 0.7 < np.std(res["snr"]) < 1.3
    assert np.mean(res["flux_err"]) == pytest.approx(flux / expect, rel=1e-3)
    assert np.mean(res["flux"]) == pytest.approx(flux, rel=0.03)
    # A negative source gives a negative S/N of the same size.
    neg = transient_snr(-img, sigma, psf, xs, ys)
    assert np.allclose(neg["snr"], -res["snr"])
    # ZOGY-style Fpsf / Fpsf_err planes: the sub-pixel peak recovers the S/N that
    # the nearest pixel loses to the sub-pixel offset.
    p0 = psf_stamp(fwhm, 19)
    fpsf = ndimage.correlate(img, p0, mode="constant") / np.sum(p0 ** 2)
    ferr = np.full(img.shape, sigma / math.sqrt(np.sum(p0 ** 2)))
    both = transient_snr(img, sigma, psf, xs, ys, fpsf=fpsf, fpsf_err=ferr)
    assert np.all(both["fpsf_snr"] >= both["fpsf_snr_pixel"] - 1e-9)
    assert np.mean(both["fpsf_snr"]) == pytest.approx(expect, abs=0.6)
    assert np.mean(both["fpsf_snr_pixel"]) < np.mean(both["fpsf_snr"])


def test_psf_photometry_fixed_stamp_and_edges():
    img = np.zeros((50, 50))
    p = psf_stamp(3.0, 15)
    img[18:33, 18:33] += 1000 * p
    t = psf_photometry(img, 1.0, p, [25.0, 0.0, -40.0], [25.0, 0.0, 5.0])
    assert t["flux"][0] == pytest.approx(1000.0)
    assert np.isfinite(t["snr"][1]) and np.isnan(t["snr"][2])
    with pytest.raises(ValueError, match="odd"):
        psf_photometry(img, 1.0, np.ones((4, 4)), [25.0], [25.0])


def test_recovered_vs_ideal_matches_simulation(pair):
    d = _static_difference(pair)
    t = recovered_vs_ideal(d, pair.difference_noise(), pair)
    assert len(t) == 9
    assert set(t["kind"]) == {"new", "brighten", "fade"}
    assert np.all(np.abs(t["snr"] * np.sign(t["flux"]) - t["ideal_snr"]) < 4)
    assert np.mean(t["ratio"]) == pytest.approx(1.0, abs=0.1)
    assert np.all(np.sign(t["flux_measured"]) == np.sign(t["flux"]))


def test_false_positives_pure_noise_and_known():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(1000, 1000))
    assert false_positives_per_mpix(z, threshold=5.0) <= 3.0
    assert false_positives_per_mpix(z, threshold=3.0) > 1000  # 2700 per Mpix expected
    pos = [(100.3, 200.7), (500.0, 500.0), (800.2, 120.9)]
    for x, y in pos:
        z[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] += 12.0
    z[700, 700] = -9.0  # a negative false detection
    rate, tab = false_positives_per_mpix(z, known_positions=pos, threshold=5.0, return_table=True)
    assert tab["known"].sum() == 3
    assert rate == pytest.approx((~tab["known"]).sum() / 1.0)
    assert (~tab["known"]).sum() >= 1 and np.any(tab["peak"] == -9.0)
    mask = np.zeros(z.shape, bool)
    mask[:500] = True
    assert false_positives_per_mpix(np.where(mask, 100.0, 0.0), mask=mask) == 0.0


def test_measure_time_and_memory():
    # In a fresh interpreter: threads left by other tests (Qt, FFTW, pools)
    # allocate on their own and would blur a process-wide peak counter.
    code = textwrap.dedent("""
        import time, numpy as np
        from bench.metrics import measure
        def alloc(n):
            a = np.ones(n)
            time.sleep(0.02)
            return float(a.sum())
        res, wall, peak = measure(alloc, 25_000_000)  # 200 MB
        _, _, small = measure(lambda: 1)
        print(res, wall, peak, small)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parents[1]), check=True)
    res, wall, peak, small = map(float, out.stdout.split())
    assert res == 25_000_000.0
    assert wall >= 0.02
    assert 190e6 < peak < 320e6
    assert small < 20e6


def test_median_time():
    t = median_time(lambda: time.sleep(0.01), repeat=3)
    assert 0.009 < t < 0.2
    with pytest.raises(ValueError):
        median_time(lambda: None, repeat=0)
