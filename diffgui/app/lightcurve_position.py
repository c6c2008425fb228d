"""Refine a light curve's position on the differences themselves (no Qt).

A clicked position, or a template catalogue's centroid of a blended star, can be half a
pixel off the variable source; forced photometry there leaves a dipole that grows with
the flux and biases it low. :func:`refine_light_curve_position` takes a first light curve
at the given position, picks the differences where the source is most significant and
fits one position for all of them
(:func:`~diffgui.engine.common.photometry.refine_position`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["refine_light_curve_position"]


def refine_light_curve_position(files: Sequence, x: float, y: float, *, table=None, n_frames: int = 20,
                                max_shift: float = 2.0, min_snr: float = 20.0, workers: int = 1):
    """Best single position of a variable source near ``(x, y)`` over a batch's differences.

    Parameters
    ----------
    files : sequence of path
        diffgui results files (a batch's outputs).
    x, y : float
        Starting position, template pixels (0-based).
    table : astropy.table.Table, optional
        Light curve already measured at ``(x, y)`` (from :func:`~diffgui.app.lightcurve.light_curve`);
        measured here when not given.
    n_frames : int
        The most significant differences (|flux / flux_err|) used.
    max_shift, min_snr : float
        See :func:`~diffgui.engine.common.photometry.refine_position`.
    workers : int
        Processes for the first light curve.

    Returns
    -------
    RefinedPosition
        ``n_frames == 0`` (and the given position) when no difference is significant or the
        results hold no noise map (ZOGY's PSF-photometry images are read at a pixel).
    """
    from diffgui.engine.common.photometry import RefinedPosition, refine_position

    from .lightcurve import _psf_for, _read, light_curve

    if table is None:
        table = light_curve(files, x, y, workers=workers)
    z = np.abs(np.asarray(table["flux"], float) / np.asarray(table["flux_err"], float))
    z[~np.isfinite(z)] = 0.0
    chosen = [str(table["file"][i]) for i in np.argsort(-z)[:n_frames] if z[i] >= min_snr]
    frames = []
    for path in chosen:
        _, diff, noise, conv, psf, _, _ = _read(path)
        if diff is None or noise is None:
            continue
        mask = ~np.isfinite(diff) | ~np.isfinite(noise) | (np.abs(diff) <= 1e-29)
        stamp, _ = _psf_for(psf, conv, mask, x, y)
        frames.append((diff, noise, stamp, mask))
    if not frames:
        return RefinedPosition(float(x), float(y), 0)
    return refine_position(frames, x, y, max_shift=max_shift, min_snr=min_snr)

