"""Light curves: forced PSF photometry at one position over a batch's differences (no Qt).

For each results file of a batch folder (``diffgui batch`` output) the difference is
measured at a position given in the template's pixels (0-based) or as RA/Dec (through
the template WCS stored with the results). The PSF is the method's difference PSF when
the results hold one (``PSF`` extension, ZOGY), else it is estimated from the
``CONVOLVED`` image (the image that was PSF-matched: it has the difference's PSF).
A constant local background is fitted with the flux. The error from the noise map
(``flux_err_map``) treats pixels as independent, but resampling (registration) and the
kernel (a convolved template's noise) correlate the difference's noise: the same fit at
positions all over the difference gives the ratio of the true to the map's error
(``noise_scale``, :func:`~diffgui.engine.common.photometry.psf_flux_noise_scale`), and
``flux_err`` is the map's error times the larger of that ratio and ``sqrt(chi2 / dof)`` of
the fit (in crowded fields the map misses the neighbours' residuals).
Fluxes are put on the template's photometric scale: when the template was convolved
with a kernel of sum ``KSUM00`` the difference is in science units and flux and error
are divided by that sum (``flux_raw`` keeps the measured value).

Times come from the science header saved by the batch (``provenance.observation``):
a mid-exposure HJD/BJD keyword when present, else ``MJD-OBS`` (+ EXPTIME/2), else
``DATE-OBS`` (+ ``TIME-OBS``/``UT``) + EXPTIME/2, as MJD.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Optional, Sequence

import numpy as np

from diffgui.engine.errors import InputError

__all__ = ["observation_info", "result_files", "measure_result", "measure_positions", "light_curve", "light_curves",
           "light_curves_from_batch", "write_light_curve"]

_MID_JD_KEYS = ("HJD-MID", "HJDMID", "PHJDMID", "HJD", "BJD-MID", "BJD", "JD-MID")
_AIRMASS_KEYS = ("AIRMASS", "SECZ", "AMSTART")
_FWHM_KEYS = ("FWHM", "SEEING", "PFWHM", "PSF_FWHM")


def _float(header, keys):
    for k in keys:
        try:
            v = float(header[k])
            if np.isfinite(v):
                return k, v
        except (KeyError, TypeError, ValueError):
            continue
    return None, None


def _date_obs_mjd(header) -> Optional[float]:
    from astropy.time import Time

    date = header.get("DATE-OBS")
    if not date:
        return None
    date = str(date).strip()
    if "T" not in date:
        t = str(header.get("TIME-OBS") or header.get("UT") or header.get("UTSTART") or "").strip()
        date = f"{date}T{t}" if t else date
    try:
        return float(Time(date, scale="utc").mjd)
    except ValueError:
        return None


def observation_info(header) -> dict:
    """Time (mid-exposure), exposure, airmass and FWHM of a science header (JSON-compatible).

    Returns
    -------
    dict
        ``time``, ``time_kind`` ('HJD', 'BJD', 'JD' or 'MJD'), ``time_key``, ``exptime``,
        ``airmass``, ``fwhm_header``; missing values are None.
    """
    out = {"time": None, "time_kind": None, "time_key": None, "exptime": None, "airmass": None,
           "fwhm_header": None}
    if header is None:
        return out
    _, exptime = _float(header, ("EXPTIME", "EXPOSURE", "ITIME"))
    out["exptime"] = exptime
    half = (exptime or 0.0) / 2.0 / 86400.0
    key, jd = _float(header, _MID_JD_KEYS)
    if key is not None:
        out.update(time=jd, time_kind=key.split("-")[0].replace("MID", "").replace("P", "") or "JD", time_key=key)
    else:
        key, mjd = _float(header, ("MJD-OBS", "MJD"))
        if mjd is None:
            mjd, key = _date_obs_mjd(header), "DATE-OBS"
        if mjd is not None:
            out.update(time=mjd + half, time_kind="MJD", time_key=f"{key}+EXPTIME/2")
    out["airmass"] = _float(header, _AIRMASS_KEYS)[1]
    out["fwhm_header"] = _float(header, _FWHM_KEYS)[1]
    return out


def result_files(batch_dir) -> list:
    """The diffgui results files (``*.fits`` with a RUNINFO extension) of a folder, sorted."""
    batch_dir = os.fspath(batch_dir)
    if not os.path.isdir(batch_dir):
        raise InputError(f"{batch_dir} is not a folder")
    from .batch_report import output_complete

    files = [p for p in sorted(glob.glob(os.path.join(batch_dir, "*.fits"))) if output_complete(p)]
    if not files:
        raise InputError(f"{batch_dir} holds no complete diffgui results files (*.fits with RUNINFO)")
    return files


def _read(path):
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(path, memmap=False) as hdul:
        names = [h.name for h in hdul]
        info = json.loads(str(Table.read(hdul["RUNINFO"])["json"][0]))
        get = (lambda n: np.asarray(hdul[n].data, float) if n in names and hdul[n].data is not None else None)
        diff, noise, conv, psf = get("DIFF"), get("NOISE"), get("CONVOLVED"), get("PSF")
        fpsf = (get("FPSF"), get("FPSF_ERR"))
        dhdr = hdul["DIFF"].header.copy()
    return info, diff, noise, conv, psf, dhdr, fpsf


def _psf_for(psf, conv, mask, x, y):
    if psf is not None and psf.shape[0] % 2 == 1 and psf.shape[0] < 200:
        return psf, "PSF"
    if conv is None:
        raise InputError("the results hold neither a PSF nor a CONVOLVED image to build one from")
    from diffgui.engine.common.photometry import stack_psf

    stamp = stack_psf(conv, mask=mask)
    return stamp, "CONVOLVED"


def _position(x, y, ra, dec, dhdr):
    if ra is None:
        return float(x), float(y)
    import warnings

    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = WCS(dhdr, naxis=2)
    if not w.has_celestial:
        raise InputError("--at-radec needs a celestial WCS in the results (the template had none); use --at X,Y")
    px, py = w.world_to_pixel_values(float(ra), float(dec))
    return float(px), float(py)


_PER_FILE: dict = {}  # the last file's PSF stamp, footprint radius and noise scale


def measure_result(path, x=None, y=None, *, ra=None, dec=None, radius: Optional[float] = None) -> dict:
    """One light-curve row from one results file (see the module notes)."""
    from diffgui.engine.common.photometry import forced_psf_flux, psf_flux_noise_scale, psf_fwhm

    info, diff, noise, conv, psf, dhdr, (fpsf, fpsf_err) = _read(path)
    px, py = _position(x, y, ra, dec, dhdr)
    if noise is None and fpsf is not None and fpsf_err is not None:
        return _row_from_fpsf(info, fpsf, fpsf_err, px, py, path)
    if diff is None or noise is None:
        raise InputError(f"{path} has no DIFF or NOISE extension: cannot measure a flux")
    mask = ~np.isfinite(diff) | ~np.isfinite(noise) | (np.abs(diff) <= 1e-29)  # HOTPANTS MASKVAL 1e-30
    key = (os.path.abspath(path), os.stat(path).st_mtime_ns, radius)
    if key not in _PER_FILE:  # position-independent: once per file for any number of positions
        stamp, source = _psf_for(psf, conv, mask, px, py)
        r = radius or max(2.0 * psf_fwhm(stamp), 5.0)
        # the map's per-pixel sigmas ignore the correlation that resampling and the kernel put into
        # the noise: the same fit at positions all over the difference gives the true error's scale
        corr = psf_flux_noise_scale(diff, noise, stamp, mask=mask, radius=r, fit_background=True)
        _PER_FILE.clear()
        _PER_FILE[key] = (stamp, source, r, corr if np.isfinite(corr) and corr > 0 else 1.0)
    stamp, source, radius, corr = _PER_FILE[key]
    fwhm_psf = psf_fwhm(stamp)
    # a local constant is fitted with the flux (residual sky and neighbours' halos in crowded fields)
    f = forced_psf_flux(diff, noise, px, py, stamp, mask=mask, radius=radius, fit_background=True)
    # the noise map misses crowding residuals: the error grows with the fit's reduced chi^2 when above 1
    inflate = float(np.sqrt(max(1.0, f.chi2 / max(f.npix - 2, 1)))) if np.isfinite(f.chi2) else 1.0
    scale = 1.0
    if str(dhdr.get("CONVOL00", "")).strip().upper() == "TEMPLATE":
        try:
            scale = float(dhdr.get("KSUM00"))
        except (TypeError, ValueError):
            scale = 1.0
    obs = (info.get("provenance") or {}).get("observation") or {}
    reg = (info.get("provenance") or {}).get("registration") or {}
    return {"time": np.nan if obs.get("time") is None else float(obs["time"]),
            "flux": f.flux / scale, "flux_err": f.flux_err * max(corr, inflate) / scale,
            "flux_err_map": f.flux_err / scale, "noise_scale": corr,
            "flux_raw": f.flux, "kernel_sum": scale, "background": f.background,
            "chi2": f.chi2, "npix": f.npix, "x": px, "y": py,
            "airmass": np.nan if obs.get("airmass") is None else float(obs["airmass"]),
            "fwhm": fwhm_psf if obs.get("fwhm_header") is None else float(obs["fwhm_header"]),
            "fwhm_psf": fwhm_psf, "psf_source": source, "method": info.get("method", ""),
            "reg_dx": np.nan if not reg else float(reg["offset"][0]),
            "reg_dy": np.nan if not reg else float(reg["offset"][1]),
            "time_kind": obs.get("time_kind") or "", "file": os.path.abspath(path)}


def _measure_safe(args):
    path, x, y, ra, dec = args
    try:
        return measure_result(path, x, y, ra=ra, dec=dec), None
    except Exception as exc:  # one bad file must not stop the curve
        return None, {"file": os.path.abspath(path), "error": str(exc)}


def _full(positions):
    return [tuple(p) + (None,) * (4 - len(p)) for p in positions]


def measure_positions(path, positions) -> list:
    """``(row, None)`` or ``(None, failure)`` per ``(x, y[, ra, dec])`` of ``positions`` in one results
    file (read once); a batch worker calls it right after writing the file."""
    return [_measure_safe((path, *pos)) for pos in _full(positions)]


def _measure_many(args):
    path, positions = args
    return measure_positions(path, positions)


def _row_from_fpsf(info, fpsf, fpsf_err, px, py, path):
    """ZOGY: its PSF-photometry images already hold the flux (template scale) at each pixel."""
    ny, nx = fpsf.shape
    ix, iy = int(round(px)), int(round(py))
    if not (0 <= ix < nx and 0 <= iy < ny):
        raise InputError(f"position ({px}, {py}) is outside the {nx} x {ny} image")
    obs = (info.get("provenance") or {}).get("observation") or {}
    reg = (info.get("provenance") or {}).get("registration") or {}
    f, e = float(fpsf[iy, ix]), float(fpsf_err[iy, ix])
    return {"time": np.nan if obs.get("time") is None else float(obs["time"]),
            "flux": f, "flux_err": e, "flux_err_map": e, "noise_scale": 1.0, "flux_raw": f, "kernel_sum": 1.0, "background": 0.0,
            "chi2": np.nan, "npix": 1,
            "x": px, "y": py, "airmass": np.nan if obs.get("airmass") is None else float(obs["airmass"]),
            "fwhm": np.nan if obs.get("fwhm_header") is None else float(obs["fwhm_header"]),
            "fwhm_psf": np.nan, "psf_source": "FPSF", "method": info.get("method", ""),
            "reg_dx": np.nan if not reg else float(reg["offset"][0]),
            "reg_dy": np.nan if not reg else float(reg["offset"][1]),
            "time_kind": obs.get("time_kind") or "", "file": os.path.abspath(path)}


def light_curve(files: Sequence, x=None, y=None, *, ra=None, dec=None, progress=None, workers: int = 1):
    """Astropy Table of :func:`measure_result` rows, sorted by time; failures listed in ``meta['failed']``.

    ``workers`` > 1 measures the files in that many processes.
    """
    return light_curves(files, [(x, y, ra, dec)], progress=progress, workers=workers)[0]


def light_curves_from_batch(results, positions: Sequence) -> list:
    """Light curves from :func:`diffgui.app.batch.run_batch` results run with ``photometry=positions``.

    Done pairs bring their rows (measured in the worker); complete outputs without them (pairs
    skipped by a resume) are measured here; failed pairs are left out.
    """
    positions = _full(positions)
    outs = []
    for r in results:
        if r.status == "done" and len(r.photometry) == len(positions):
            outs.append(r.photometry)
        elif r.status in ("done", "skipped"):
            outs.append(measure_positions(r.job.output, positions))
    if not outs:
        raise InputError("no pair of the batch was subtracted: no light curve")
    return [_table([o[k] for o in outs], *positions[k]) for k in range(len(positions))]


def light_curves(files: Sequence, positions: Sequence, *, progress=None, workers: int = 1) -> list:
    """One :func:`light_curve` table per ``(x, y, ra, dec)`` of ``positions``, each file read once."""
    positions = _full(positions)
    for x, y, ra, dec in positions:
        if (x is None or y is None) and (ra is None or dec is None):
            raise InputError("give a position: x and y (template pixels) or ra and dec (degrees)")
    if workers is None or int(workers) < 0:
        raise InputError(f"workers must be 0 or positive, got {workers}")
    tasks = [(p, positions) for p in files]
    if int(workers) > 1 and len(tasks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from .batch import _resolve_workers, _worker_init, sigint_held  # the workers die with this process

        n = int(workers)
        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(os.getpid(), max(1, _resolve_workers(0) // n))) as pool:
            with sigint_held():
                outs = pool.map(_measure_many, tasks, chunksize=4)
            outs = list(outs)
    else:
        outs = []
        for n, t in enumerate(tasks, 1):
            outs.append(_measure_many(t))
            if progress is not None:
                progress(n, len(tasks))
    return [_table([o[k] for o in outs], *positions[k]) for k in range(len(positions))]


def _table(outs, x, y, ra, dec):
    from astropy.table import Table

    rows = [r for r, _ in outs if r is not None]
    failed = [f for _, f in outs if f is not None]
    if not rows:
        raise InputError("no result could be measured: " + "; ".join(f"{f['file']}: {f['error']}" for f in failed[:3]))
    t = Table(rows=rows, names=list(rows[0].keys()))
    t.sort(["time", "file"])
    t.meta.update({"position": {"x": x, "y": y, "ra": ra, "dec": dec}, "failed": failed,
                   "flux_scale": "template (difference flux / KSUM00 when the template was convolved)",
                   "time": f"mid-exposure, {rows[0]['time_kind'] or 'unknown'}"})
    return t


def write_light_curve(table, path, *, overwrite: bool = False) -> str:
    """Write ``table`` as ECSV atomically (refuses to replace a file unless ``overwrite``)."""
    from .results_io import atomic_write

    return atomic_write(os.fspath(path), lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True),
                        overwrite=overwrite)
