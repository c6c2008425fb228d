"""Position refinement of forced photometry (diffgui.engine.common.photometry.refine_position)."""

import numpy as np

from diffgui.engine.common.photometry import forced_psf_flux, refine_position


def _gauss(shape, x, y, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _series(true_xy, fluxes, sigma=2.0, noise=5.0, seed=1):
    rng = np.random.default_rng(seed)
    shape = (64, 64)
    psf = _gauss((21, 21), 10, 10, sigma)
    frames = []
    for f in fluxes:
        d = f * _gauss(shape, *true_xy, sigma) + rng.normal(0, noise, shape)
        frames.append((d, np.full(shape, noise), psf, None))
    return frames


def test_refined_position_removes_the_dipole_and_the_flux_bias():
    true = (31.37, 30.82)
    fluxes = [20000.0, -15000.0, 8000.0, 30000.0, 500.0]
    frames = _series(true, fluxes)
    start = (31.95, 30.25)  # 0.8 px off, as a blended catalogue centroid can be
    r = refine_position(frames, *start)
    assert np.hypot(r.x - true[0], r.y - true[1]) < 0.03
    assert r.n_frames == 4  # the 500-count frame is below min_snr
    assert r.chi2_best < 0.2 * r.chi2_start
    d, s, psf, _ = frames[3]
    off = forced_psf_flux(d, s, *start, psf, radius=5, fit_background=True)
    on = forced_psf_flux(d, s, r.x, r.y, psf, radius=5, fit_background=True)
    assert off.flux < 0.95 * 30000  # the offset position loses flux (8 % here) ...
    assert abs(on.flux - 30000) < 3 * on.flux_err  # ... the refined one does not
    assert on.chi2 / (on.npix - 2) < 1.5 < off.chi2 / (off.npix - 2)


def test_no_significant_frame_keeps_the_given_position():
    frames = _series((30.0, 30.0), [10.0, -10.0])
    r = refine_position(frames, 30.4, 29.8)
    assert (r.x, r.y, r.n_frames) == (30.4, 29.8, 0)


def test_the_shift_is_bounded():
    frames = _series((34.0, 30.0), [30000.0])
    r = refine_position(frames, 30.0, 30.0, max_shift=1.5)
    assert np.hypot(r.x - 30.0, r.y - 30.0) <= 1.5 + 1e-9


def _results_file(path, diff, noise, psf, time):
    import json

    from astropy.io import fits
    from astropy.table import Table

    info = {"method": "hotpants", "provenance": {"observation": {"time": time, "time_kind": "MJD"}}}
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(diff.astype(np.float32), name="DIFF"),
            fits.ImageHDU(noise.astype(np.float32), name="NOISE"), fits.ImageHDU(psf, name="PSF"),
            fits.BinTableHDU(Table({"json": [json.dumps(info)]}), name="RUNINFO")]
    fits.HDUList(hdus).writeto(path)
    return str(path)


def test_lightcurve_refine_option_measures_at_the_fitted_position(tmp_path):
    from astropy.table import Table

    from diffgui.app.lightcurve_position import refine_light_curve_position
    from diffgui.cli import main

    true = (31.37, 30.82)
    fluxes = [20000.0, -15000.0, 30000.0]
    out = tmp_path / "batch"
    out.mkdir()
    files = [_results_file(out / f"f{i}.fits", d, s, psf, 60000.0 + i)
             for i, (d, s, psf, _) in enumerate(_series(true, fluxes))]
    r = refine_light_curve_position(files, 31.95, 30.25)
    assert r.n_frames == 3 and np.hypot(r.x - true[0], r.y - true[1]) < 0.03
    lc = tmp_path / "lc.ecsv"
    assert main(["lightcurve", str(out), "--at", "31.95,30.25", "--refine", "-o", str(lc)]) == 0
    t = Table.read(lc, format="ascii.ecsv")
    assert abs(t["x"][0] - true[0]) < 0.03 and abs(t["y"][0] - true[1]) < 0.03
    assert np.all(np.abs(t["flux"] - fluxes) < 3 * t["flux_err"])
    assert t.meta["refined_from"]["n_frames"] == 3
