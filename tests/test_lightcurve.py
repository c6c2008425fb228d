"""Forced PSF photometry and light curves over a batch's differences."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from vetting_support import write_pair

from diffgui.app import batch, lightcurve
from diffgui.cli import main
from diffgui.engine.common.photometry import forced_psf_flux, psf_fwhm, stack_psf
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair


def gauss(size=21, fwhm=3.0, x=0.0, y=0.0):
    h = size // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    s = fwhm / 2.3548
    p = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return p / p.sum()


def test_forced_flux_is_unbiased_and_its_error_matches_the_scatter():
    rng = np.random.default_rng(4)
    psf = gauss()
    fluxes = []
    for _ in range(300):
        img = rng.normal(0, 5.0, (41, 41))
        img[10:31, 10:31] += 800 * gauss(x=0.3, y=-0.2)
        fluxes.append(forced_psf_flux(img, np.full(img.shape, 5.0), 20.3, 19.8, psf))
    f = np.array([r.flux for r in fluxes])
    e = np.median([r.flux_err for r in fluxes])
    assert np.mean(f) == pytest.approx(800, abs=3 * e / np.sqrt(300) + 2)
    assert np.std(f) == pytest.approx(e, rel=0.12)
    assert np.median([r.chi2 / r.npix for r in fluxes]) == pytest.approx(1.0, abs=0.1)
    assert psf_fwhm(gauss(fwhm=4.0)) == pytest.approx(4.0, rel=0.15)
    with pytest.raises(InputError, match="outside"):
        forced_psf_flux(img, np.ones(img.shape), 60, 3, psf)
    with pytest.raises(InputError, match="odd"):
        forced_psf_flux(img, np.ones(img.shape), 5, 3, np.ones((4, 4)))


def test_stacked_psf_matches_the_simulated_one():
    sim = simulate_pair(shape=(256, 256), seed=3)
    psf = stack_psf(sim.image)
    true = sim.image_psf(128, 128, psf.shape[0])
    assert np.abs(psf - true / true.sum()).max() < 0.1 * true.max() / true.sum()


def test_observation_info_from_headers():
    h = fits.Header({"PHJDMID": 2456471.475, "EXPTIME": 300.0, "SECZ": 1.02, "PFWHM": 5.2})
    info = lightcurve.observation_info(h)
    assert info["time"] == 2456471.475 and info["time_kind"] == "HJD" and info["airmass"] == 1.02
    h = fits.Header({"MJD-OBS": 56470.9675, "EXPTIME": 300.0})
    assert lightcurve.observation_info(h)["time"] == pytest.approx(56470.9675 + 150 / 86400)
    h = fits.Header({"DATE-OBS": "2013-06-27", "UT": "23:13:12", "EXPTIME": 300.0})
    info = lightcurve.observation_info(h)
    assert info["time_kind"] == "MJD" and info["time"] == pytest.approx(56470.967500 + 150 / 86400, abs=1e-6)
    assert lightcurve.observation_info(None)["time"] is None


def test_lightcurve_command_on_a_batch_recovers_a_transient(tmp_path):
    sims = [simulate_pair(shape=(128, 128), transients=1, transient_snr_range=(40, 40), seed=7) for _ in range(2)]
    pairs = []
    for i, sim in enumerate(sims):
        sci, tmpl = write_pair(tmp_path, sim, names=(f"s{i}.fits", f"t{i}.fits"))
        with fits.open(sci, mode="update") as h:
            h[0].header["MJD-OBS"] = 60000.0 + i
            h[0].header["EXPTIME"] = 60.0
        pairs.append((sci, tmpl))
    res = batch.run_batch(batch.plan_jobs(pairs, tmp_path / "out"), "zogy", {}, backend="serial")
    assert [r.status for r in res] == ["done", "done"], [r.error for r in res]
    x, y = float(sims[0].transients["x"][0]), float(sims[0].transients["y"][0])
    out = tmp_path / "lc.ecsv"
    assert main(["lightcurve", str(tmp_path / "out"), "--at", f"{x},{y}", "-o", str(out)]) == 0
    t = Table.read(out, format="ascii.ecsv")
    assert {"time", "flux", "flux_err", "file", "airmass", "fwhm"} <= set(t.colnames)
    assert list(t["time"]) == pytest.approx([60000.0 + 30 / 86400, 60001.0 + 30 / 86400])
    assert np.all(t["flux"] / t["flux_err"] > 15)
    assert main(["lightcurve", str(tmp_path / "out"), "--at", f"{x},{y}", "-o", str(out)]) == 2  # no overwrite
    assert main(["lightcurve", str(tmp_path), "--at", "1,2", "-o", str(tmp_path / "x.ecsv")]) == 2


def test_noise_scale_finds_correlated_noise_that_the_map_misses():
    from scipy import ndimage

    from diffgui.engine.common.photometry import psf_flux_noise_scale

    rng = np.random.default_rng(11)
    psf = gauss(fwhm=3.0)
    white = rng.normal(0, 4.0, (256, 256))
    assert psf_flux_noise_scale(white, np.full(white.shape, 4.0), psf) == pytest.approx(1.0, abs=0.08)
    # resampling-like correlation: per-pixel sigma is right, PSF fluxes scatter more than it says
    k = np.outer([0.1, 0.8, 0.1], [0.1, 0.8, 0.1]) + np.outer([0.2, 0.6, 0.2], [0.2, 0.6, 0.2])
    k /= k.sum()
    corr = ndimage.convolve(rng.normal(0, 4.0, (256, 256)), k, mode="wrap")
    sigma = np.full(corr.shape, 4.0 * np.sqrt((k ** 2).sum()))
    scale = psf_flux_noise_scale(corr, sigma, psf)
    f = [forced_psf_flux(corr, sigma, x, y, psf) for x in range(20, 236, 12) for y in range(20, 236, 12)]
    empirical = np.std([r.flux for r in f]) / np.median([r.flux_err for r in f])
    assert scale > 1.3 and scale == pytest.approx(empirical, rel=0.12)


def test_noise_scale_with_a_fitted_background_matches_that_fit():
    from scipy import ndimage

    from diffgui.engine.common.photometry import psf_flux_noise_scale

    rng = np.random.default_rng(5)
    psf = gauss(fwhm=3.0)
    corr = ndimage.gaussian_filter(rng.normal(0, 4.0, (256, 256)), 1.2, mode="wrap")
    sigma = np.full(corr.shape, corr.std())
    scale = psf_flux_noise_scale(corr, sigma, psf, radius=6, fit_background=True)
    f = [forced_psf_flux(corr, sigma, x, y, psf, radius=6, fit_background=True)
         for x in range(20, 236, 8) for y in range(20, 236, 8)]
    empirical = np.std([r.flux for r in f]) / np.median([r.flux_err for r in f])
    assert scale > 1.3 and scale == pytest.approx(empirical, rel=0.12)
