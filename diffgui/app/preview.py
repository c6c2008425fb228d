"""Region preview (no Qt): run a method on a rectangle of the pair plus the margin its kernel needs.

:class:`RegionPreview` holds the region; :meth:`RegionPreview.request` runs the
method on the region grown by :func:`margin_for` (so that the kernel or PSF
sees the pixels it needs), cuts the margin off again and returns a
:class:`~diffgui.app.run.Run` whose results cover only the region and whose
``provenance['preview']`` says so. A newer request cancels an older one still
running (the engine's ``cancel`` callback), which is what a debounced
parameter edit in the window needs; the debounce itself is the caller's timer.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from diffgui.engine.errors import Cancelled, InputError

from .pair import crop_pair
from .run import Run

__all__ = ["RegionPreview", "margin_for", "MIN_REGION"]

#: Smallest region side (pixels) worth a preview.
MIN_REGION = 32


def margin_for(method: str, params: dict, fwhm: float = 4.0) -> int:
    """Pixels around a region that the method's kernel or PSF needs.

    HOTPANTS: the stamp half-size ``rss`` (``rel_rss`` x FWHM) plus the kernel
    half-width ``r``; SFFT: the kernel half-size plus 2 FWHM; ZOGY: the PSF
    footprint (about 6 FWHM) plus its tile overlap.
    """
    params = params or {}
    if method == "hotpants":
        extra = params.get("extra") or {}
        r = extra.get("r") or math.ceil(float(params.get("rel_r", 3)) * fwhm)
        rss = extra.get("rss") or math.ceil(float(params.get("rel_rss", 4)) * fwhm)
        return int(r + rss)
    if method == "sfft":
        k = params.get("kernel_shape") or (7, 7)
        return int(max(k) // 2 + math.ceil(2 * fwhm))
    return int(math.ceil(6 * fwhm) + int(params.get("overlap", 50) or 0) // 2)


#: ZOGY parameters that do not change its PSFs or star lists (a preview edit of only
#: these reuses the PSFs estimated by the previous preview of the same crop).
_NOT_PSF = frozenset({"nx", "ny", "overlap", "dx", "dy", "scale", "psf_clean", "fit_scale", "fit_shift",
                      "flux_scale", "good_regions", "background", "noise_correlation", "nthreads",
                      "memory_limit", "get_psf", "get_Fpsf", "verbose", "cancel"})
_PSF_ITEMS = ("image_psf", "template_psf", "image_obj", "template_obj")


def _psf_key(params: dict) -> str:
    """What ZOGY's PSFs depend on: the parameters (``psf_options`` entries by name, as
    ``run_zogy`` receives them) minus those in :data:`_NOT_PSF`."""
    from .run import jsonable

    flat = {k: v for k, v in (params or {}).items() if k != "psf_options"}
    flat.update((params or {}).get("psf_options") or {})
    return repr(sorted((k, repr(jsonable(v))) for k, v in flat.items() if k not in _NOT_PSF))


class CapturingRun(Run):
    """A :class:`Run` whose method also hands its PSFs and star lists to ``capture`` (ZOGY's
    ``_result`` details), so that the next preview of the same crop (or the next trial of
    :func:`diffgui.app.tuning.tune`) can pass them back instead of estimating them again."""

    def __init__(self, *args, capture: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._capture = capture

    @property
    def info(self):
        base = super().info
        if self._capture is None or base.details is None:
            return base
        capture, details = self._capture, base.details

        def keep(info, shape):
            capture.update({k: info.get(k) for k in _PSF_ITEMS})
            return details(info, shape)
        return dataclasses.replace(base, details=keep)


@dataclass
class _Region:
    x0: int
    y0: int
    x1: int
    y1: int


class RegionPreview:
    """Previews of one pair on one rectangle.

    Parameters
    ----------
    pair : Pair
        The full pair.
    fwhm : float, optional
        FWHM used for the margins (default: the pair's truth or 4 px).
    """

    def __init__(self, pair, fwhm: Optional[float] = None):
        self.pair = pair
        self.fwhm = float(fwhm or 4.0)
        self.region: Optional[_Region] = None
        self._lock = threading.Lock()
        self._generation = 0
        self._psfs: dict = {}  # (method, crop, PSF parameters) -> ZOGY PSFs and star lists
        self._aligned: set = set()  # crops whose alignment was measured

    def set_region(self, x0, y0, x1, y1) -> tuple:
        """Set the rectangle (0-based pixel corners, any order); returns it clipped.

        Raises
        ------
        InputError
            Outside the image, or smaller than :data:`MIN_REGION` pixels a side.
        """
        ny, nx = self.pair.image.shape
        xa, xb = sorted((int(math.floor(x0)), int(math.ceil(x1))))
        ya, yb = sorted((int(math.floor(y0)), int(math.ceil(y1))))
        if xb <= 0 or yb <= 0 or xa >= nx or ya >= ny:
            raise InputError(f"the region ({xa}, {ya})-({xb}, {yb}) is outside the {nx} x {ny} image")
        xa, ya, xb, yb = max(xa, 0), max(ya, 0), min(xb, nx), min(yb, ny)
        if xb - xa < MIN_REGION or yb - ya < MIN_REGION:
            raise InputError(f"the region is {xb - xa} x {yb - ya} pixels: draw at least "
                             f"{MIN_REGION} x {MIN_REGION} (the kernel needs room)")
        self.region = _Region(xa, ya, xb, yb)
        return xa, ya, xb, yb

    def clear(self) -> None:
        self.region = None

    def _bounds(self, margin: int) -> tuple:
        """``(x0, y0, x1, y1)`` of the region grown by ``margin``, clipped to the image."""
        r = self.region
        ny, nx = self.pair.image.shape
        return max(r.x0 - margin, 0), max(r.y0 - margin, 0), min(r.x1 + margin, nx), min(r.y1 + margin, ny)

    def _cut(self, margin: int):
        r = self.region
        gx0, gy0, gx1, gy1 = self._bounds(margin)
        crop = crop_pair(self.pair, slice(gy0, gy1), slice(gx0, gx1), f"{getattr(self.pair, 'name', '')} preview")
        inner = (slice(r.y0 - gy0, r.y1 - gy0), slice(r.x0 - gx0, r.x1 - gx0))
        return crop, inner, margin

    def request(self, method: str, params: dict, *, verbose: Optional[Callable] = None) -> Run:
        """Run ``method`` on the region (plus margin); cancels any older request still running.

        Returns
        -------
        Run
            ``results`` cut to the region, ``provenance['preview']`` =
            ``{'region': (x0, y0, x1, y1), 'margin': m}``, scorecard when scorable.

        Raises
        ------
        InputError
            No region set, or the region plus margin is smaller than the kernel.
        Cancelled
            A newer request (or :meth:`cancel`) superseded this one.
        """
        if self.region is None:
            raise InputError("no preview region: drag a rectangle on a panel first")
        with self._lock:
            self._generation += 1
            gen = self._generation
        crop, inner, margin = self._cut(margin_for(method, params, self.fwhm))
        if min(crop.image.shape) < margin + MIN_REGION:
            raise InputError(f"the region with its margin is {crop.image.shape[1]} x "
                             f"{crop.image.shape[0]} pixels, too small for a kernel that needs "
                             f"{margin} pixels around it: draw a larger region")
        bounds = self._bounds(margin)
        psf_key = (method, bounds, _psf_key(params)) if method == "zogy" else None
        cached = self._psfs.get(psf_key) if psf_key else None
        run_params = dict(params)
        if cached:  # the PSFs and their stars of this crop: only ZOGY itself runs again
            run_params.update({k: v for k, v in cached.items() if run_params.get(k) is None})
        captured = {}
        run = CapturingRun(method=method, params=run_params, capture=captured if psf_key else None)
        # the crop of a pair is as aligned as the pair: measure it once per crop
        run.check_alignment = bounds not in self._aligned
        run.execute(crop, verbose=verbose, cancel=lambda: self._generation != gen, score=False)
        self._aligned.add(bounds)
        run.params = dict(params)  # as the user set them (not the cached PSFs)
        if psf_key and not cached and all(captured.get(k) is not None for k in _PSF_ITEMS):
            with self._lock:
                while len(self._psfs) >= 4:  # bounded: the oldest crops go first
                    del self._psfs[next(iter(self._psfs))]
                self._psfs[psf_key] = {k: captured[k] for k in _PSF_ITEMS}
        if self._generation != gen:
            raise Cancelled("superseded by a newer preview")
        run.results = {k: (v[inner] if isinstance(v, np.ndarray) and v.ndim == 2
                           and v.shape == crop.image.shape else v) for k, v in run.results.items()}
        r = self.region
        run.provenance["preview"] = {"region": (r.x0, r.y0, r.x1, r.y1), "margin": margin}
        return run

    def cancel(self) -> None:
        """Cancel the running request, if any."""
        with self._lock:
            self._generation += 1
