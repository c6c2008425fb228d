"""Quality, speed and memory metrics shared by every method's tests and benchmarks.

All images are ``[y, x]`` arrays; positions are 0-based pixel centres.  Noise
arguments are sigma maps (or scalars) in the units of the image they normalise.
Masks follow the project convention: True = bad / excluded.

The numbers these functions return are the ones stdpipe-reference.md §6 quotes:

* :func:`normalised_residual`: robust std of ``D / sigma_D`` away from sources
  (``q_D``/``q_S``; 1.0 ideal).
* :func:`residual_at_stars`: how much of the stars is left in ``D`` (fraction of
  star flux, scatter in units of sigma).
* :func:`transient_snr` / :func:`recovered_vs_ideal`: matched-filter PSF photometry
  S/N of known transients against the ideal S/N of the simulation.
* :func:`false_positives_per_mpix`: detections above a threshold on a normalised
  plane that are not known sources.
* :func:`measure` / :func:`median_time`: wall time and peak memory.
"""

from __future__ import annotations

import gc
import math
import statistics
import threading
import time

import numpy as np
from astropy.table import Table
from scipy import ndimage

__all__ = [
    "robust_std",
    "source_mask",
    "normalised_residual",
    "residual_at_stars",
    "psf_photometry",
    "transient_snr",
    "recovered_vs_ideal",
    "false_positives_per_mpix",
    "measure",
    "median_time",
]

MAD_TO_STD = 1.4826


def robust_std(x, mask=None):
    """Robust standard deviation ``1.4826 * median(|x - median(x)|)``.

    Parameters
    ----------
    x : array_like
        Values; non-finite ones are ignored.
    mask : array_like of bool, optional
        True for values to ignore (same shape as ``x``).

    Returns
    -------
    float
        NaN if no finite value is left.
    """
    x = np.asarray(x, dtype=float)
    good = np.isfinite(x)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool)
    v = x[good]
    if v.size == 0:
        return float("nan")
    med = np.median(v)
    return float(MAD_TO_STD * np.median(np.abs(v - med)))


def _is_pair(obj):
    return hasattr(obj, "image_model") and hasattr(obj, "template_model") and hasattr(obj, "stars")


def source_mask(pair_or_image, level=0.2, grow=2, thresh=3.0, template=None):
    """Pixels near sources (True), to exclude when measuring residual noise.

    Parameters
    ----------
    pair_or_image : SimulatedPair or array_like
        With a :class:`~diffgui.engine.simulation.SimulatedPair` the truth is used:
        a pixel is a source pixel where the noiseless source light (stars and
        transients) in the science image exceeds ``level`` times the science
        noise, or the template source light exceeds ``level`` times the template
        noise.  With an image, sources are detected with sep (background
        subtracted, ``thresh`` sigma, segmentation map).
    level : float
        Source light threshold in units of the local noise (truth mode).
    grow : int
        Dilate the mask by this many pixels.
    thresh : float
        Detection threshold in sigma (image mode).
    template : array_like, optional
        Image mode only: a second image whose sources are also masked.

    Returns
    -------
    numpy.ndarray of bool
        True near sources; ``~source_mask(...)`` selects background pixels.
    """
    if _is_pair(pair_or_image):
        p = pair_or_image
        m = (p.image_model - p.image_background) > level * p.image_noise
        m |= (p.template_model - p.template_background) > level * p.template_noise
    else:
        m = _detected_mask(pair_or_image, thresh)
        if template is not None:
            m |= _detected_mask(template, thresh)
    if grow and grow > 0:
        m = ndimage.binary_dilation(m, structure=_disk(grow))
    return m


def _disk(r):
    r = int(math.ceil(r))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx * xx + yy * yy <= r * r + 1e-9


def _detected_mask(image, thresh):
    import sep

    img = np.ascontiguousarray(image, dtype=np.float64)
    bad = ~np.isfinite(img)
    work = np.where(bad, 0.0, img) if bad.any() else img
    bkg = sep.Background(work, mask=bad if bad.any() else None)
    sub = work - bkg.back()
    # sep's limits are process-wide (detection.py sets them): raise, then restore.
    old_stack, old_limit = sep.get_extract_pixstack(), sep.get_sub_object_limit()
    sep.set_extract_pixstack(max(old_stack, 300000, img.size // 4))
    sep.set_sub_object_limit(max(old_limit, 4096))
    try:
        _, seg = sep.extract(sub, thresh, err=bkg.rms(), mask=bad if bad.any() else None,
                             segmentation_map=True)
    finally:
        sep.set_extract_pixstack(old_stack)
        sep.set_sub_object_limit(old_limit)
    return (seg > 0) | bad


def _normalise(diff, noise):
    diff = np.asarray(diff, dtype=float)
    noise = np.asarray(noise, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = diff / noise
    z = np.where(np.isfinite(z) & (np.broadcast_to(noise, diff.shape) > 0), z, np.nan)
    return z


def normalised_residual(diff, noise, mask=None, exclude=None):
    """Robust std of ``diff / noise`` away from sources (1.0 for an ideal difference).

    Parameters
    ----------
    diff : array_like
        Difference image (or a normalised plane with ``noise=1``).
    noise : array_like or float
        Its expected sigma map.
    mask : array_like of bool, optional
        Bad pixels (True) to ignore.
    exclude : array_like of bool, optional
        Source pixels (True) to ignore, e.g. :func:`source_mask`.

    Returns
    -------
    float
        ``1.4826 * MAD(diff / noise)`` over the remaining finite pixels.
    """
    z = _normalise(diff, noise)
    ignore = np.zeros(z.shape, dtype=bool)
    if mask is not None:
        ignore |= np.asarray(mask, dtype=bool)
    if exclude is not None:
        ignore |= np.asarray(exclude, dtype=bool)
    return robust_std(z, ignore)


def _aperture_offsets(radius):
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = dx * dx + dy * dy <= radius * radius
    return dy[inside], dx[inside]


def _column(table, *names):
    for n in names:
        if n in table.colnames:
            return np.asarray(table[n])
    return None


def residual_at_stars(diff, noise, stars, radius=None, mask=None, min_flux=0.0,
                      exclude_positions=None, isolation=0.05):
    """Residuals left in a difference at the positions of constant, unsaturated stars.

    Parameters
    ----------
    diff : array_like
        Difference image (science flux units).
    noise : array_like or float
        Its sigma map.
    stars : astropy.table.Table
        Columns ``x, y`` and a science flux column ``image_flux`` (or ``flux``).
        Rows flagged in ``saturated``, ``template_saturated`` or ``variable`` (if
        present) are skipped.
    radius : float, optional
        Aperture radius in pixels; default twice the median ``image_fwhm`` column
        when present, else 5.
    mask : array_like of bool, optional
        Bad pixels; stars whose aperture touches one are skipped.
    min_flux : float
        Only stars at least this bright (science ADU).
    exclude_positions : (N, 2) array_like, optional
        ``(x, y)`` of sources to stay away from (e.g. transients): stars within
        ``2 * radius`` are skipped.
    isolation : float or None
        Skip stars with a neighbour (any star of the table) brighter than
        ``isolation`` times their flux within ``2 * radius``, so that apertures
        measure the star itself.  None keeps crowded stars.

    Returns
    -------
    dict
        ``n_stars``; ``mean_abs``: mean of ``|D / sigma|`` over all aperture pixels
        (0.80 for pure Gaussian noise); ``scatter``: robust std of ``D / sigma`` over
        the aperture pixels (1.0 ideal); ``flux_left``: sum of ``D`` in the apertures
        over the sum of the stars' total fluxes (0 ideal, flux-weighted);
        ``flux_left_median``: median over stars of aperture ``D`` / flux; ``radius``.
    """
    diff = np.asarray(diff, dtype=float)
    h, w = diff.shape
    noise_arr = np.broadcast_to(np.asarray(noise, dtype=float), diff.shape)
    x = np.asarray(stars["x"], dtype=float)
    y = np.asarray(stars["y"], dtype=float)
    flux = _column(stars, "image_flux", "flux")
    if flux is None:
        raise ValueError("stars needs an 'image_flux' or 'flux' column.")
    flux = flux.astype(float)
    if radius is None:
        fw = _column(stars, "image_fwhm", "fwhm")
        radius = 2.0 * float(np.median(fw)) if fw is not None and len(fw) else 5.0
    keep = np.isfinite(x) & np.isfinite(y) & (flux >= min_flux) & (flux > 0)
    for flag in ("saturated", "template_saturated", "variable"):
        col = _column(stars, flag)
        if col is not None:
            keep &= ~col.astype(bool)
    r = int(math.ceil(radius))
    ix = np.rint(x).astype(int)
    iy = np.rint(y).astype(int)
    keep &= (ix - r >= 0) & (ix + r < w) & (iy - r >= 0) & (iy + r < h)
    if exclude_positions is not None and len(exclude_positions):
        ex = np.asarray(exclude_positions, dtype=float).reshape(-1, 2)
        d2 = (x[:, None] - ex[None, :, 0]) ** 2 + (y[:, None] - ex[None, :, 1]) ** 2
        keep &= ~(d2 < (2 * radius) ** 2).any(axis=1)
    if isolation is not None and keep.any():
        from scipy.spatial import cKDTree

        finite = np.isfinite(x) & np.isfinite(y)
        tree = cKDTree(np.column_stack([x[finite], y[finite]]))
        fl = flux[finite]
        for i in np.flatnonzero(keep):
            near = tree.query_ball_point((x[i], y[i]), 2 * radius)
            if sum(fl[j] > isolation * flux[i] for j in near) > 1:  # itself counts once
                keep[i] = False
    dy, dx = _aperture_offsets(radius)
    sel = np.flatnonzero(keep)
    rows = iy[sel, None] + dy[None, :]
    cols = ix[sel, None] + dx[None, :]
    d = diff[rows, cols]
    s = noise_arr[rows, cols]
    good = np.isfinite(d) & np.isfinite(s) & (s > 0)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool)[rows, cols]
    ok = good.all(axis=1)
    d, s, sel = d[ok], s[ok], sel[ok]
    if sel.size == 0:
        return {"n_stars": 0, "mean_abs": float("nan"), "scatter": float("nan"),
                "flux_left": float("nan"), "flux_left_median": float("nan"), "radius": radius}
    z = d / s
    ap = d.sum(axis=1)
    return {
        "n_stars": int(sel.size),
        "mean_abs": float(np.mean(np.abs(z))),
        "scatter": robust_std(z),
        "flux_left": float(ap.sum() / flux[sel].sum()),
        "flux_left_median": float(np.median(ap / flux[sel])),
        "radius": float(radius),
    }


def _psf_at(psf, x, y):
    stamp = psf(x, y) if callable(psf) else np.asarray(psf, dtype=float)
    if stamp.ndim != 2 or stamp.shape[0] % 2 == 0 or stamp.shape[1] % 2 == 0:
        raise ValueError(f"PSF stamps must be 2-D with odd sizes, got shape {stamp.shape}.")
    return stamp


def psf_photometry(diff, noise, psf, x, y):
    """Matched-filter (optimal PSF-fit) photometry at known positions.

    For each position the stamp ``P`` is centred on pixel ``(round(x), round(y))``;
    with weights ``1 / sigma**2``::

        F = sum(D P / sigma**2) / sum(P**2 / sigma**2),
        err = 1 / sqrt(sum(P**2 / sigma**2)),   S/N = F / err.

    Parameters
    ----------
    diff : array_like
        Image to measure (difference, no background).
    noise : array_like or float
        Its sigma map.  For an honest S/N of bright sources it should include the
        sources' own Poisson noise.
    psf : callable or array_like
        ``psf(x, y) -> stamp`` (odd-sized, e.g. ``SimulatedPair.image_psf``, which
        puts the sub-pixel offset into the stamp) or one fixed stamp.
    x, y : array_like
        Positions.

    Returns
    -------
    astropy.table.Table
        ``x, y, flux, flux_err, snr`` (NaN where the stamp has no valid pixel).
        Pixels outside the image or non-finite are left out of the sums.
    """
    diff = np.asarray(diff, dtype=float)
    h, w = diff.shape
    noise_arr = np.broadcast_to(np.asarray(noise, dtype=float), diff.shape)
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    flux = np.full(x.size, np.nan)
    err = np.full(x.size, np.nan)
    for i in range(x.size):
        p = _psf_at(psf, x[i], y[i])
        ry, rx = p.shape[0] // 2, p.shape[1] // 2
        ix, iy = int(np.rint(x[i])), int(np.rint(y[i]))
        y0, y1 = max(iy - ry, 0), min(iy + ry + 1, h)
        x0, x1 = max(ix - rx, 0), min(ix + rx + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        pp = p[y0 - (iy - ry):y1 - (iy - ry), x0 - (ix - rx):x1 - (ix - rx)]
        d = diff[y0:y1, x0:x1]
        s = noise_arr[y0:y1, x0:x1]
        good = np.isfinite(d) & np.isfinite(s) & (s > 0)
        if not good.any():
            continue
        wgt = np.where(good, pp / np.where(good, s, 1.0) ** 2, 0.0)
        norm = float(np.sum(wgt * pp))
        if norm <= 0:
            continue
        flux[i] = float(np.sum(wgt * np.where(good, d, 0.0))) / norm
        err[i] = 1.0 / math.sqrt(norm)
    return Table({"x": x, "y": y, "flux": flux, "flux_err": err, "snr": flux / err})


def _subpixel_peak(r, x, y):
    """Value of the peak of ``r`` near ``(x, y)``: the pixel extremum in the 3x3 around
    the nearest pixel, refined by a 2-D quadratic fit to its 3x3 neighbourhood.
    The extremum has the sign of ``r`` at the nearest pixel."""
    h, w = r.shape
    ix, iy = int(np.rint(x)), int(np.rint(y))
    if not (0 <= ix < w and 0 <= iy < h) or not np.isfinite(r[iy, ix]):
        return float("nan"), float("nan")
    pixel = float(r[iy, ix])
    sign = 1.0 if pixel >= 0 else -1.0
    win = sign * r[max(iy - 1, 0):iy + 2, max(ix - 1, 0):ix + 2]
    if not np.isfinite(win).any():
        return pixel, pixel
    jy, jx = np.unravel_index(np.nanargmax(win), win.shape)
    py, px = max(iy - 1, 0) + jy, max(ix - 1, 0) + jx
    best = float(sign * r[py, px])
    if not (1 <= py < h - 1 and 1 <= px < w - 1):
        return sign * best, pixel
    z = sign * r[py - 1:py + 2, px - 1:px + 2]
    if not np.isfinite(z).all():
        return sign * best, pixel
    yy, xx = np.mgrid[-1:2, -1:2]
    a = np.column_stack([np.ones(9), xx.ravel(), yy.ravel(), xx.ravel() ** 2,
                         yy.ravel() ** 2, (xx * yy).ravel()])
    c = np.linalg.lstsq(a, z.ravel(), rcond=None)[0]
    hess = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
    if np.linalg.det(hess) <= 0 or hess[0, 0] >= 0:
        return sign * best, pixel  # not a maximum
    off = np.linalg.solve(hess, -c[1:3])
    if np.any(np.abs(off) > 1.0):
        return sign * best, pixel
    ox, oy = off
    peak = c[0] + c[1] * ox + c[2] * oy + c[3] * ox * ox + c[4] * oy * oy + c[5] * ox * oy
    return sign * float(max(peak, best)), pixel


def transient_snr(diff, noise, psf, x, y, fpsf=None, fpsf_err=None):
    """S/N of sources at known positions in a difference image.

    Parameters
    ----------
    diff, noise, psf, x, y
        As in :func:`psf_photometry` (matched-filter PSF photometry on ``diff``).
    fpsf, fpsf_err : array_like, optional
        ZOGY-style PSF-photometry images (flux and its error at each pixel).  When
        given, their ratio is also read at each position: at the nearest pixel
        (``fpsf_snr_pixel``, what stdpipe reported) and at the sub-pixel peak
        (``fpsf_snr``: the extremum within one pixel refined by a 2-D quadratic fit
        of its 3x3 neighbourhood).

    Returns
    -------
    astropy.table.Table
        ``x, y, flux, flux_err, snr`` (signed: negative for negative sources), plus
        ``fpsf_snr`` and ``fpsf_snr_pixel`` when ``fpsf`` is given.
    """
    out = psf_photometry(diff, noise, psf, x, y)
    if fpsf is not None:
        if fpsf_err is None:
            raise ValueError("fpsf needs fpsf_err.")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.asarray(fpsf, dtype=float) / np.asarray(fpsf_err, dtype=float)
        vals = [_subpixel_peak(ratio, xi, yi) for xi, yi in zip(out["x"], out["y"])]
        out["fpsf_snr"] = [v[0] for v in vals]
        out["fpsf_snr_pixel"] = [v[1] for v in vals]
    return out


def recovered_vs_ideal(diff, noise, pair, psf=None, fpsf=None, fpsf_err=None):
    """Recovered against ideal S/N for every transient of a simulated pair.

    Parameters
    ----------
    diff : array_like
        Difference image in science flux units.
    noise : array_like or float
        Its sigma map.
    pair : SimulatedPair
        The simulation (its ``transients`` table gives positions, fluxes, ideal S/N).
    psf : callable or array_like, optional
        PSF of ``diff`` for the matched filter; default ``pair.image_psf`` (right for
        differences in the science PSF, i.e. template convolved to the science).
    fpsf, fpsf_err : array_like, optional
        ZOGY PSF-photometry planes, read as in :func:`transient_snr`.

    Returns
    -------
    astropy.table.Table
        Per transient: ``id, kind, x, y, flux`` (true, signed), ``ideal_snr``,
        ``flux_measured``, ``flux_ratio`` (measured / true), ``snr`` (signed),
        ``ratio`` (``snr * sign(flux) / ideal_snr``; 1 ideal), and with ``fpsf``:
        ``fpsf_snr``, ``fpsf_snr_pixel``, ``fpsf_ratio``.
    """
    tr = pair.transients
    psf = pair.image_psf if psf is None else psf
    m = transient_snr(diff, noise, psf, tr["x"], tr["y"], fpsf, fpsf_err)
    sign = np.sign(np.asarray(tr["flux"], dtype=float))
    ideal = np.asarray(tr["ideal_snr"], dtype=float)
    out = Table({
        "id": np.asarray(tr["id"]),
        "kind": np.asarray(tr["kind"]),
        "x": np.asarray(tr["x"], float),
        "y": np.asarray(tr["y"], float),
        "flux": np.asarray(tr["flux"], float),
        "ideal_snr": ideal,
        "flux_measured": np.asarray(m["flux"]),
        "flux_ratio": np.asarray(m["flux"]) / np.asarray(tr["flux"], float),
        "snr": np.asarray(m["snr"]),
        "ratio": sign * np.asarray(m["snr"]) / ideal,
    })
    if fpsf is not None:
        out["fpsf_snr"] = m["fpsf_snr"]
        out["fpsf_snr_pixel"] = m["fpsf_snr_pixel"]
        out["fpsf_ratio"] = sign * np.asarray(m["fpsf_snr"]) / ideal
    return out


def false_positives_per_mpix(norm_image, known_positions=None, threshold=5.0, radius=5.0,
                             mask=None, return_table=False):
    """Rate of detections on a normalised plane that match no known source.

    A detection is a connected (8-neighbour) region where ``|norm_image| >=
    threshold``; its position is its extreme pixel.  Regions within ``radius`` of a
    known position are not false.

    Parameters
    ----------
    norm_image : array_like
        Normalised plane (``D / sigma``, S_corr, scaled residual).
    known_positions : (N, 2) array_like, optional
        ``(x, y)`` of real sources (transients, and stars if their residuals should
        not count).
    threshold : float
        Detection threshold in sigma (both signs).
    radius : float
        Matching radius in pixels.
    mask : array_like of bool, optional
        Pixels to ignore (also excluded from the area).
    return_table : bool
        Also return a Table (``x, y, peak, known``) of all detections.

    Returns
    -------
    float or (float, astropy.table.Table)
        False detections per million valid pixels.
    """
    z = np.asarray(norm_image, dtype=float)
    valid = np.isfinite(z)
    if mask is not None:
        valid &= ~np.asarray(mask, dtype=bool)
    above = valid & (np.abs(np.where(valid, z, 0.0)) >= threshold)
    labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    if n:
        absz = np.where(above, np.abs(np.where(valid, z, 0.0)), 0.0)
        pos = np.array(ndimage.maximum_position(absz, labels, np.arange(1, n + 1)), dtype=float)
        py, px = pos[:, 0], pos[:, 1]
        peak = z[py.astype(int), px.astype(int)]
    else:
        px = py = peak = np.zeros(0)
    known = np.zeros(px.size, dtype=bool)
    if known_positions is not None and len(known_positions) and px.size:
        kp = np.asarray(known_positions, dtype=float).reshape(-1, 2)
        d2 = (px[:, None] - kp[None, :, 0]) ** 2 + (py[:, None] - kp[None, :, 1]) ** 2
        known = (d2 <= radius * radius).any(axis=1)
    area = valid.sum() / 1e6
    rate = float((~known).sum() / area) if area > 0 else float("nan")
    if return_table:
        return rate, Table({"x": px, "y": py, "peak": peak, "known": known})
    return rate


# ---- speed and memory ------------------------------------------------------------

def _read_hwm():
    """Peak resident set size (bytes) of this process since the last reset (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm():
    """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _RSSSampler(threading.Thread):
    """Samples the RSS of this process plus its children until stopped."""

    def __init__(self, proc, interval):
        super().__init__(daemon=True)
        self.proc = proc
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()

    def _total(self):
        total = self.proc.memory_info().rss
        try:
            for child in self.proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except Exception:
                    pass
        except Exception:
            pass
        return total

    def run(self):
        while True:
            self.peak = max(self.peak, self._total())
            if self._stop_event.wait(self.interval):
                break
        self.peak = max(self.peak, self._total())

    def stop(self):
        self._stop_event.set()
        self.join()


def measure(fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` and measure wall time and peak memory.

    Peak memory is the highest resident set size (RSS) during the call minus the
    RSS just before it, in bytes:

    * for this process, the kernel's exact peak counter (``VmHWM``, reset before
      the call through ``/proc/self/clear_refs``, Linux >= 4.0), so short-lived
      allocations are counted;
    * child processes (the HOTPANTS executable) are included by a thread that
      samples ``psutil`` RSS of the process tree every 5 ms (the only method where
      the kernel counter is unavailable).

    Memory the allocator kept from earlier calls and reuses is not counted as new.
    glibc serves big blocks with mmap (threshold 128 kB, rising to at most 32 MB as
    such blocks are freed) and returns them to the system on free, so for
    array-heavy code on large images this is close to the true extra memory of the
    call; smaller temporaries may be under-counted.

    Parameters
    ----------
    fn : callable
        The function to run.
    *args, **kwargs
        Its arguments.

    Returns
    -------
    (object, float, int)
        ``(result, wall_seconds, peak_rss_bytes)``.
    """
    import psutil

    proc = psutil.Process()
    gc.collect()
    kernel = _reset_hwm()
    base = proc.memory_info().rss
    sampler = _RSSSampler(proc, 0.005)
    sampler.start()
    t0 = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    finally:
        wall = time.perf_counter() - t0
        sampler.stop()
    peak = sampler.peak
    if kernel:
        hwm = _read_hwm()
        if hwm is not None:
            peak = max(peak, hwm)
    return result, wall, int(max(peak - base, 0))


def median_time(fn, repeat=3):
    """Median wall time (seconds) of ``repeat`` calls of ``fn()``.

    Parameters
    ----------
    fn : callable
        Called without arguments (use ``functools.partial`` or a lambda).
    repeat : int
        Number of calls (>= 1).

    Returns
    -------
    float
    """
    repeat = int(repeat)
    if repeat < 1:
        raise ValueError("repeat must be >= 1.")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))
