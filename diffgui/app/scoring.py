"""The scorecard of a finished run (no Qt): glue between a Run, its Pair and the engine's quality module.

Star catalogues are detected once per pair and cached (weakly, by pair), so a
scorecard after each run costs only the scoring itself. Scoring never fails a
run: problems become a log line and an empty scorecard.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from typing import Callable, Optional

import numpy as np

from diffgui.engine.common import quality as _quality

__all__ = ["stars_for", "template_objects", "kernel_sum_function", "score_results", "score_run"]

_STARS: dict = {}  # id(pair) -> (weakref to the pair, ids of its arrays, StarSets)


_TEMPLATES: dict = {}  # digest of a template and its mask -> its catalogue (a series shares one)
_TEMPLATES_KEPT = 4


def _digest(*arrays) -> str:
    # sha1 hashes ~2 GB/s here, blake2b ~1 GB/s: a cache key of content, not a signature
    h = hashlib.sha1(usedforsecurity=False)
    for a in arrays:
        if a is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            h.update(repr((a.dtype.str, a.shape)).encode())
            h.update(a.data)
    return h.hexdigest()


def template_objects(template, template_mask=None):
    """The scorecard's template catalogue, detected once per template content (cached:
    the pairs of a series with one template pay it once)."""
    key = _digest(template, template_mask)
    objs = _TEMPLATES.get(key)
    if objs is None:
        objs = _quality.template_catalogue(template, template_mask)
        while len(_TEMPLATES) >= _TEMPLATES_KEPT:
            _TEMPLATES.pop(next(iter(_TEMPLATES)), None)
        _TEMPLATES[key] = objs
    return objs


def stars_for(pair, light: bool = False) -> _quality.StarSets:
    """The fit/score star sets of ``pair`` (computed on first use, then cached).

    Parameters
    ----------
    pair : diffgui.app.pair.Pair or object with ``engine_inputs()``
        The pair (its arrays must not change while cached).
    light : bool
        Batch runs: no science-image catalogue (only the template's sources are
        excluded from the source-free pixels; ``image_fwhm`` is None), which
        halves the cost; a full entry already cached is used as it is.

    Returns
    -------
    StarSets
    """
    inputs = pair.engine_inputs()
    key = (id(inputs["image"]), id(inputs["template"]))
    entry = _STARS.get(id(pair))
    if entry is not None and entry[0]() is pair and entry[1] == key and (light or not entry[3]):
        return entry[2]
    stars = _quality.prepare_stars(inputs["image"], inputs["template"], inputs.get("mask"),
                                   inputs.get("template_mask"), image_catalogue=not light,
                                   template_objects=template_objects(inputs["template"],
                                                                     inputs.get("template_mask")))
    for k in [k for k, e in _STARS.items() if e[0]() is None]:  # pairs gone
        del _STARS[k]
    try:
        _STARS[id(pair)] = (weakref.ref(pair), key, stars, light)
    except TypeError:  # not weak-referenceable: no cache
        pass
    return stars


def kernel_sum_function(results: dict, shape) -> Optional[Callable[[float, float], float]]:
    """``f(x, y) -> kernel sum`` for a run with a convolution kernel (not ZOGY's PSF), or None."""
    if results.get("kernel") is None:
        return None
    from . import kernels

    if not kernels.has_kernel(results):
        return None

    def f(x, y):
        k = kernels.kernel_at(results, x, y, shape)
        return float(np.sum(k)) if k is not None else float("nan")
    return f


def score_results(results: dict, stars: _quality.StarSets, image=None) -> _quality.Scorecard:
    """Scorecard of a run's results (``diff`` and ``noise`` or ``scorr``).

    HOTPANTS and SFFT are scored as diff / noise; ZOGY (no noise map) by S_corr.
    """
    diff = results.get("diff")
    if diff is None:
        raise ValueError("the run produced no difference image")
    noise, scorr = results.get("noise"), None
    if noise is None and results.get("scorr") is not None:
        scorr = results["scorr"]
    ks = kernel_sum_function(results, np.shape(diff))
    return _quality.compute_scorecard(diff, stars, noise=noise, scorr=scorr, image=image,
                                      kernel_sum=ks)


def score_run(run, pair, log: Optional[Callable[[str], None]] = None, light: bool = False) -> dict:
    """Compute ``run.scorecard`` (and return its dict); log and return {} when it cannot be scored.

    Parameters
    ----------
    run : diffgui.app.run.Run
        A finished run (``results`` filled).
    pair : Pair
        The pair it ran on.
    log : callable, optional
        Receives one line (the summary, or why there is no scorecard).
    light : bool
        Cheaper star sets for batch runs (see :func:`stars_for`).
    """
    t0 = time.perf_counter()
    try:
        stars = stars_for(pair, light=light)
        card = score_results(run.results, stars, image=pair.engine_inputs()["image"])
    except Exception as exc:  # a scorecard is a bonus: never fail the run for it
        if log is not None:
            log(f"scorecard: not computed ({exc})")
        run.scorecard = None
        return {}
    run.scorecard = card
    run.timings["scorecard"] = time.perf_counter() - t0
    if log is not None:
        m = card.metrics
        log(f"scorecard: robust std {m['robust_std'].text()}, |D/noise| at {card.n_stars} star "
            f"peaks median {m['peak_median'].text()} p95 {m['peak_p95'].text()}, flux left "
            f"{m['flux_left'].text()}" + (f"; out of range: {', '.join(card.flagged())}"
                                          if card.flagged() else ""))
    return card.to_dict()
