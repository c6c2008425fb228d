"""Noise model: calibrated against the simulator's true noise; masks honoured."""

import numpy as np
import pytest

from diffgui.engine.errors import InputError
from diffgui.engine.common.noise import build_noise_map, estimate_background, resolve_noise
from diffgui.engine.simulation import simulate_pair


@pytest.mark.parametrize("gain", [1.0, 2.0, 4.0])
def test_noise_model_matches_true_noise_on_sky(gain):
    pair = simulate_pair(shape=(384, 384), n_stars=150, image_gain=gain, image_readnoise=5.0,
                         image_sky=800.0, transients=0, seed=int(gain * 10))
    sigma = build_noise_map(pair.image, gain=gain)
    true = pair.image_noise
    # Sky pixels: far from every star (the truth knows where they are).
    yy, xx = np.mgrid[:384, :384]
    sky = np.ones((384, 384), bool)
    for x, y in zip(pair.stars["x"], pair.stars["y"]):
        sky[(xx - x) ** 2 + (yy - y) ** 2 < 12 ** 2] = False
    ratio = np.median(sigma[sky]) / np.median(true[sky])
    assert abs(ratio - 1) < 0.05, ratio


def test_source_term_follows_stars_and_gain():
    pair = simulate_pair(shape=(256, 256), n_stars=40, star_flux_range=(2e4, 1e5), transients=0,
                         image_gain=2.0, seed=3)
    s1 = build_noise_map(pair.image, gain=1.0)
    s4 = build_noise_map(pair.image, gain=4.0)
    s_none = build_noise_map(pair.image, gain=None)
    star = pair.stars[np.argmax(pair.stars["image_flux"])]
    ix, iy = int(round(star["x"])), int(round(star["y"]))
    # At a bright star the Poisson term dominates: lower gain, more noise.
    assert s1[iy, ix] > s4[iy, ix] > s_none[iy, ix]
    # At the star the model agrees with the true noise (source + sky) within 15 %.
    truth_gain2 = build_noise_map(pair.image, gain=2.0)[iy, ix]
    assert truth_gain2 == pytest.approx(pair.image_noise[iy, ix], rel=0.15)


def test_masked_pixels_do_not_bias_the_background():
    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 5.0, (256, 256))
    img[100:160, 100:160] = 5e4  # a huge saturated blob
    mask = np.zeros_like(img, bool)
    mask[95:165, 95:165] = True
    bkg = estimate_background(img, mask=mask)
    assert np.median(bkg.back) == pytest.approx(100.0, abs=0.5)
    assert bkg.back[130, 130] == pytest.approx(100.0, abs=2.0)
    assert bkg.globalrms == pytest.approx(5.0, rel=0.05)


def test_nan_pixels_and_explicit_maps():
    rng = np.random.default_rng(1)
    img = rng.normal(50.0, 3.0, (128, 128))
    img[10:20, 10:20] = np.nan
    sigma = build_noise_map(img, gain=2.0)
    assert np.isfinite(sigma).all() and (sigma > 0).all()
    err = np.full((128, 128), 3.0, dtype=">f4")
    out = resolve_noise(err, img)
    assert out.dtype.isnative and out is not err
    out[0, 0] = 99
    assert err[0, 0] == 3.0  # the caller's array is never modified
    assert resolve_noise(None, img) is None and resolve_noise(False, img) is None
    assert resolve_noise(True, img, gain=2.0).shape == img.shape
    with pytest.raises(InputError, match="shape"):
        resolve_noise(np.ones((10, 10)), img)
    with pytest.raises(InputError, match="masked"):
        estimate_background(img, mask=np.ones_like(img, bool))


# ---- issue 11: the Poisson model, the check and real crowded frames ----------------------
from diffgui.engine.common.noise import check_noise, measure_pixel_noise  # noqa: E402


@pytest.mark.parametrize("gain,readnoise", [(1.0, 0.0), (1.0, 10.0), (2.5, 5.0), (4.0, 0.0), (4.0, 10.0)])
def test_poisson_model_within_5_percent_at_star_peaks_and_sky(gain, readnoise):
    pair = simulate_pair(shape=(256, 256), n_stars=60, star_flux_range=(2e4, 2e5), psf="moffat",
                         image_fwhm=3.5, image_gain=gain, image_readnoise=readnoise, image_sky=600.0,
                         transients=0, seed=int(gain * 7 + readnoise))
    sigma = build_noise_map(pair.image, gain=gain, read_noise=readnoise)
    true = pair.image_noise
    yy, xx = np.mgrid[:256, :256]
    sky = np.ones((256, 256), bool)
    for x, y in zip(pair.stars["x"], pair.stars["y"]):
        sky[(xx - x) ** 2 + (yy - y) ** 2 < 12 ** 2] = False
    assert np.median(sigma[sky] / true[sky]) == pytest.approx(1.0, abs=0.05)
    bright = pair.stars[pair.stars["image_flux"] > 5e4]
    assert len(bright) >= 5
    ix, iy = np.rint(bright["x"]).astype(int), np.rint(bright["y"]).astype(int)
    peak = np.array([np.unravel_index(np.argmax(pair.image[y - 1:y + 2, x - 1:x + 2]), (3, 3))
                     for x, y in zip(ix, iy)])
    py, px = iy + peak[:, 0] - 1, ix + peak[:, 1] - 1
    ratio = sigma[py, px] / true[py, px]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.all(np.abs(ratio - 1) < 0.1)
    check = check_noise(pair.image, sigma, gain=gain)
    assert check.ok, check.message()


def test_stdpipe_model_still_reachable():
    pair = simulate_pair(shape=(128, 128), n_stars=20, transients=0, seed=4)
    rms = estimate_background(pair.image).rms
    old = build_noise_map(pair.image, gain=None, model="stdpipe")
    assert np.allclose(old, rms)
    assert not np.allclose(build_noise_map(pair.image, gain=2.0, model="stdpipe"),
                           build_noise_map(pair.image, gain=2.0))
    with pytest.raises(InputError, match="noise model"):
        build_noise_map(pair.image, gain=2.0, model="sep")


def test_check_names_the_reason():
    rng = np.random.default_rng(5)
    img = rng.normal(1000.0, np.sqrt(1000.0 / 2.0), (200, 200))
    wrong = build_noise_map(img, gain=0.5)  # true gain 2
    check = check_noise(img, wrong, gain=0.5)
    assert not check.ok and "gain or read noise probably wrong" in check.reason
    assert check.message().startswith("WARNING")
    good = build_noise_map(img, gain=2.0)
    assert check_noise(img, good, gain=2.0).ok
    noise, level = measure_pixel_noise(img)
    assert noise == pytest.approx(np.sqrt(500.0), rel=0.05)
    lines = []
    resolve_noise(True, img, gain=0.5, log=lines.append)
    assert lines and lines[-1].startswith("WARNING")


def test_background_subtracted_image_keeps_its_sky_noise():
    rng = np.random.default_rng(6)
    img = rng.normal(0.0, 20.0, (200, 200))  # sky of 800 ADU at gain 2 already subtracted
    lines = []
    sigma = build_noise_map(img, gain=2.0, log=lines.append)
    assert np.median(sigma) == pytest.approx(20.0, rel=0.05)
    assert any("background-subtracted" in line for line in lines)


def test_crowded_real_frame_noise_is_the_pixel_noise():
    from astropy.io import fits

    from shared_paths import DATA

    path = DATA / "pydia-bulge-kb13475" / "pairs" / "0102_vs_0001_sci.fits"
    if not path.exists():
        pytest.skip("shared data not found")
    img = fits.getdata(path).astype(float)
    hdr = fits.getheader(path)
    sigma = build_noise_map(img, gain=hdr["GAIN"], read_noise=hdr["RDNOISE"])
    assert np.median(sigma) == pytest.approx(19.0, abs=1.0)  # sep RMS: 71
    check = check_noise(img, sigma, gain=hdr["GAIN"])
    assert check.ok, check.message()
    rms_check = check_noise(img, build_noise_map(img), gain=None)
    assert not rms_check.ok and "crowded" in rms_check.reason
