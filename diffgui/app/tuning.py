"""Suggest settings: a small, documented search over the parameters that matter (no Qt).

:func:`tune` runs a method on the whole pair with a sequence of parameter
changes and keeps the one with the best quality scorecard
(:mod:`diffgui.engine.common.quality`). The search is greedy by stage: each
stage tries the values of one parameter (or one group) with the best values of
the earlier stages, in the order of how much they usually matter:

========  ====================================================================
method    stages (values tried)
========  ====================================================================
hotpants  ``ko`` 0-3 (spatial kernel order); ``bgo`` 0-2 (background order);
          ``rel_r``/``rel_rss`` (kernel half-width r and stamp half-size rss in
          FWHM: 2/3, 3/4, 4/5); ``ng`` (Gaussian basis: the wrapper's, or 3 Gaussians at
          0.5, 1, 2 x the matching sigma scaled by 0.7 or 1.4);
          ``nsx``/``nsy`` (stamps per side: 10, 15, 20)
zogy      ``nx = ny`` 1, 3, 6, then 8, 12, 16 while each finer one improves and a
          tile keeps >= 64 px and >= 10 FWHM a side (tiles; more than one with PSF
          ``order`` 2, so that each tile gets the PSF of its centre: the PSF is
          constant within a tile, so a PSF whose width or shape changes across the
          field needs tiles of ~1/6-1/16 of the frame for bright stars);
          flux scale: one for the frame from a matching kernel (ZOGY's default),
          ``flux_scale='fit'`` (each tile fits its own, where the frame's is
          biased), or ``fit_scale=False`` (the catalogue's); PSF ``order`` 1, 2, 0
          (spatial degree of the PSF model)
sfft      ``kernel_poly_order`` 0-3; ``kernel_shape`` 9, 11, 13 (the larger ones
          skipped once one does not improve), 5, 7 px; ``bg_poly_order`` 0-3
========  ====================================================================

Trials are scored on regions that sample the field (``regions=5``: the four
corners and the centre, 1/4 of the frame's side each;
:mod:`diffgui.app.tuning_regions`): HOTPANTS and SFFT fit on the stars inside
the regions in the full-frame geometry (one spatial polynomial over regions far
apart), ZOGY runs only the full-frame tiles that touch a region with the PSFs of
the full-frame model. Stars are split into a fit half, given to HOTPANTS and
SFFT as their object lists, and a score half, the only stars scored (ZOGY picks
its own PSF stars). A stage stops early when the time budget would be exceeded
by the next run. When anything but the base wins, the base and the winner are
run again on the whole frame as the user will run them (:attr:`TuneResult.as_user`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from diffgui.engine.errors import Cancelled, InputError

from . import scoring

_MISSING = object()

__all__ = ["Trial", "TuneResult", "stages", "objective", "no_worse", "tune", "format_table",
           "describe_changes", "diff_params"]

_NG_SCALES = {"default": None, "narrow": 0.7, "wide": 1.4}  # of the matching sigma


def _ng(stars, scale):
    """A HOTPANTS Gaussian basis ``3 6 s/2 4 s 2 2s`` with s = scale x the matching sigma."""
    if scale is None or stars is None or not stars.image_fwhm:
        return None
    fs, ft = max(stars.image_fwhm, stars.fwhm), min(stars.image_fwhm, stars.fwhm)
    s = max(math.sqrt(max(fs * fs - ft * ft, 0.25)) / 2.3548, 0.3) * scale
    return [3, 6, round(0.5 * s, 4), 4, round(s, 4), 2, round(2 * s, 4)]


@dataclass
class Trial:
    """One run of the search: what it changed against the best before it (flat names), its
    full parameters, scores and time."""

    changes: dict
    params: dict
    quality: dict = field(default_factory=dict)
    objective: float = math.inf
    seconds: float = 0.0
    error: Optional[str] = None
    stage: str = ""


@dataclass
class TuneResult:
    """What :func:`tune` tried and what it found (``best`` is the lowest objective)."""

    method: str
    base: dict
    trials: list
    best: Trial
    default: Trial
    seconds: float
    stopped_by_budget: bool = False
    #: (base, best) run on the whole frame as the user will run them (own stars), or None
    as_user: Optional[tuple] = None
    #: the regions the trials were scored on (:class:`~diffgui.app.tuning_regions.RegionSample`), or None
    sample: Optional[object] = None

    @property
    def improved(self) -> bool:
        return self.best is not self.default and self.best.objective < self.default.objective


def _extra(params: dict, **opts) -> dict:
    extra = dict(params.get("extra") or {})
    for k, v in opts.items():
        if v is None:
            extra.pop(k, None)
        else:
            extra[k] = v
    return {"extra": extra or None}


def _zogy_tiles(params: dict, n: int) -> dict:
    """``nx = ny = n``; more than one tile also sets the PSF ``order`` to 2 (unless the base
    sets one): ZOGY evaluates the PSF model at each tile centre, so tiles of a constant
    (order 0) model all get the same PSF and only refit the flux scale and shift."""
    opts = dict(params.get("psf_options") or {})
    if n > 1 and "order" not in opts:
        opts["order"] = 2
    return {"nx": n, "ny": n, "psf_options": opts or None}


def _zogy_scale(params: dict, fit_scale: bool, flux_scale: Optional[str]) -> dict:
    """``fit_scale`` and ZOGY's ``flux_scale`` option (None: its default, one F_r for the
    frame from a matching kernel; 'fit': each tile fits its own F_r)."""
    opts = {k: v for k, v in (params.get("psf_options") or {}).items() if k != "flux_scale"}
    if flux_scale is not None:
        opts["flux_scale"] = flux_scale
    return {"fit_scale": fit_scale, "psf_options": opts or None}


#: Finer tilings tried after 6 x 6 (each only when the coarser one improved), while a tile's
#: inner side stays >= MIN_TILE_SIDE px and >= TILE_SIDE_FWHM x the FWHM (PSF stamp and the
#: per-tile flux-scale fit need room; ZOGY adds its ``overlap`` around each tile).
FINE_TILES, MIN_TILE_SIDE, TILE_SIDE_FWHM = (8, 12, 16), 64, 10.0


def _fine_tiles(stars) -> list:
    """The :data:`FINE_TILES` whose tiles stay large enough on the frame of ``stars``
    (all of them when the frame is unknown)."""
    shape = getattr(getattr(stars, "source_free", None), "shape", None)
    if not shape:
        return list(FINE_TILES)
    fwhm = max(float(getattr(stars, "image_fwhm", None) or 0.0), float(getattr(stars, "fwhm", None) or 0.0))
    side = max(MIN_TILE_SIDE, TILE_SIDE_FWHM * fwhm)
    return [n for n in FINE_TILES if min(shape) / n >= side]


def _growing(make, size):
    """Mark an option of an ascending series: when it does not improve, the larger ones of its
    stage are skipped (a 13 x 13 SFFT kernel of order 3 costs 5-6 runs of a 7 x 7 one)."""
    make.grows = size
    return make


def stages(method: str, base: dict, stars=None) -> list:
    """``[(stage name, [changes, ...]), ...]``: the search space of ``method``.

    Each ``changes`` is a dict of parameter values merged into the best so far.
    """
    if method == "hotpants":
        return [
            ("ko", [lambda p, v=v: _extra(p, ko=v) for v in (0, 1, 2, 3)]),
            ("bgo", [lambda p, v=v: _extra(p, bgo=v) for v in (0, 1, 2)]),
            ("r/rss", [lambda p, a=a, b=b: {"rel_r": a, "rel_rss": b} for a, b in ((2, 3), (3, 4), (4, 5))]),
            ("ng", [lambda p, g=g: _extra(p, ng=_ng(stars, g)) for g in _NG_SCALES.values()]),
            ("nsx/nsy", [lambda p, n=n: _extra(p, nsx=n, nsy=n) for n in (10, 15, 20)]),
        ]
    if method == "zogy":
        return [
            ("nx/ny", [lambda p, n=n: _zogy_tiles(p, n) for n in (1, 3)]
             + [_growing(lambda p, n=n: _zogy_tiles(p, n), n) for n in (6, *_fine_tiles(stars))]),
            ("flux scale", [lambda p, s=s, f=f: _zogy_scale(p, s, f)
                            for s, f in ((True, None), (True, "fit"), (False, None))]),
            ("order", [lambda p, o=o: {"psf_options": {**(p.get("psf_options") or {}), "order": o}}
                           for o in (1, 2, 0)]),
        ]
    if method == "sfft":
        return [
            ("kernel_poly_order", [lambda p, v=v: {"kernel_poly_order": v,
                                                   "flux_poly_order": min(v, int(p.get("flux_poly_order", 1) or 0))}
                                   for v in (0, 1, 2, 3)]),
            ("kernel_shape", [_growing(lambda p, k=k: {"kernel_shape": (k, k)}, k) for k in (9, 11, 13)]
             + [lambda p, k=k: {"kernel_shape": (k, k)} for k in (5, 7)]),
            ("bg_poly_order", [lambda p, v=v: {"bg_poly_order": v} for v in (0, 1, 2, 3)]),
        ]
    raise InputError(f"no tuning space for method {method!r} (hotpants, zogy or sfft)")


def objective(quality: dict) -> float:
    """Lower is better: star-peak scores against their limits, plus penalties for the rest.

    ``median/1.0 + p95/2.5`` (2.0 exactly at the acceptance limits), plus
    penalties when the robust std leaves 0.85-1.2, the flux left exceeds 2 %, or
    the background left exceeds 0.2 sigma. Unscorable runs are infinitely bad.
    """
    m = (quality or {}).get("metrics") or {}
    pm, p95 = m.get("peak_median"), m.get("peak_p95")
    if pm is None or p95 is None:
        return math.inf
    score = pm / 1.0 + p95 / 2.5
    rstd = m.get("robust_std")
    if rstd:
        score += 2.0 * max(0.0, abs(math.log(rstd)) - 0.17)
    if m.get("flux_left") is not None:
        score += 10.0 * max(0.0, abs(m["flux_left"]) - 0.02)
    if m.get("background_left") is not None:
        score += max(0.0, m["background_left"] - 0.2)
    return float(score)


def _key(method: str, params: dict) -> str:
    """Identity of a setting: defaults filled in (``ny=None`` is ``ny=nx``), objects ignored."""
    from diffgui.engine import params as P

    from .run import jsonable

    full = {**P.defaults(method), **params}
    if "ny" in full and full.get("ny") is None:
        full["ny"] = full.get("nx")
    return repr(sorted((k, repr(jsonable(v))) for k, v in full.items() if k != "obj"))


def _run_trial(pair, method, params, stars, use_obj, cancel, psfs=None, sample=None) -> Trial:
    """One run, scored. ``psfs``: ZOGY PSFs and star lists by PSF options (the trials that
    change only tiles or fits reuse them; :class:`~diffgui.app.preview.CapturingRun`).
    ``sample``: a :class:`~diffgui.app.tuning_regions.RegionSample`; the run fits on its
    stars (HOTPANTS, SFFT) or runs only its tiles (ZOGY, once the PSFs are known) and is
    scored on its regions; None: the whole frame."""
    from .preview import _PSF_ITEMS, CapturingRun, _psf_key

    if sample is not None:
        stars = sample.stars
    run_params = dict(params)
    if use_obj and len(stars.fit):
        run_params["obj"] = stars.fit
    key = _psf_key(params) if method == "zogy" and psfs is not None else None
    cached = psfs.get(key) if key else None
    if cached:
        run_params.update({k: v for k, v in cached.items() if run_params.get(k) is None})
    captured = {}
    run = CapturingRun(method=method, params=run_params, capture=captured if key else None)
    run.check_alignment = not (psfs or {}).get("aligned")  # once per search: the pair is the same
    t0 = time.perf_counter()
    trial = Trial(changes={}, params=dict(params))
    try:
        results = None
        if cached and sample is not None and not run.check_alignment:
            from .tuning_regions import run_zogy_tiles

            results = run_zogy_tiles(pair, params, cached, sample.regions, cancel)
        if results is None:
            run.execute(pair, cancel=cancel, score=False)
            results = run.results
        if psfs is not None:
            psfs["aligned"] = True
            if key and not cached and all(captured.get(k) is not None for k in _PSF_ITEMS):
                psfs[key] = {k: captured[k] for k in _PSF_ITEMS}
        card = scoring.score_results(results, stars, image=pair.engine_inputs()["image"])
        trial.quality = card.to_dict()
        trial.objective = objective(trial.quality)
    except Cancelled:
        raise
    except Exception as exc:  # a setting that fails is a bad setting, not the end of the search
        trial.error = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    trial.seconds = time.perf_counter() - t0
    return trial


def tune(pair, method: str, base: Optional[dict] = None, budget: float = 60.0, *,
         max_trials: Optional[int] = None, verbose: Optional[Callable[[str], None]] = None,
         cancel: Optional[Callable[[], bool]] = None, regions: int = 5) -> TuneResult:
    """Search the settings of ``method`` on ``pair`` within ``budget`` seconds.

    Parameters
    ----------
    pair : diffgui.app.pair.Pair
        The pair (header gains are used as in any run).
    method : str
        ``'hotpants'``, ``'zogy'`` or ``'sfft'``.
    base : dict, optional
        Starting parameters (a preset's); the first trial runs them unchanged.
    budget : float
        Seconds; no run starts when the last run's time would exceed it.
    max_trials : int, optional
        Stop after this many runs (the first is the base settings).
    verbose : callable, optional
        Receives one line per trial.
    cancel : callable, optional
        Returns True to stop (raises Cancelled).
    regions : {5, 9, 0}
        Score the trials on 5 regions (corners and centre) or 9 (3 x 3 grid) that
        sample the field (:mod:`diffgui.app.tuning_regions`); 0: the whole frame.
        Small frames, or regions with too few stars, use the whole frame.

    Returns
    -------
    TuneResult

    Raises
    ------
    InputError
        Unknown method, or too few stars in the pair to score anything.
    """
    method = str(method).lower()
    stages(method, {})  # unknown method: InputError before any work
    if budget <= 0:
        raise InputError(f"the budget must be positive, got {budget}")
    stars = scoring.stars_for(pair)
    space = stages(method, dict(base or {}), stars)
    if len(stars.score) < 5:
        raise InputError(f"only {len(stars.score)} bright isolated stars to score on: cannot tune "
                         "this pair (a field with more stars, or lower thresholds, is needed)")
    use_obj = method in ("hotpants", "sfft")
    say = verbose or (lambda line: None)
    from .tuning_regions import make_sample

    sample = make_sample(stars, pair.engine_inputs()["image"].shape, regions)
    say(f"    scored on {sample.describe()}" if sample is not None else "    scored on the whole frame")
    t_start = time.perf_counter()
    best_params = dict(base or {})
    seen, trials, psfs = {}, [], {}

    def attempt(params, changes, stage):
        k = _key(method, params)
        if k in seen:
            return seen[k]
        trial = _run_trial(pair, method, params, stars, use_obj, cancel, psfs, sample=sample)
        trial.changes, trial.stage = changes, stage
        seen[k] = trial
        trials.append(trial)
        say(_line(len(trials), trial))
        return trial

    default = best = attempt(best_params, {}, "base")
    stopped, confirm = False, use_obj or sample is not None
    for stage, options in space:
        skip_above = None
        for make in options:
            grows = getattr(make, "grows", None)
            if grows is not None and skip_above is not None and grows > skip_above:
                continue
            elapsed = time.perf_counter() - t_start
            last = trials[-1].seconds if trials else 0.0
            # the whole-frame confirmation of a new best (two runs) stays within the budget
            reserve = default.seconds + max(last, best.seconds) if confirm else 0.0
            if elapsed + last + reserve > budget or (max_trials is not None and len(trials) >= max_trials):
                stopped = True
                break
            params = {**best_params, **make(best_params)}
            changes = diff_params(best_params, params)
            trial = attempt(params, changes, stage)
            # within 3 % is a tie (the score stars sample the noise too): ties keep the
            # simpler, earlier setting, so a pair that needs nothing keeps its defaults
            if trial.objective < best.objective - max(0.01, 0.03 * best.objective):
                best = trial
            elif grows is not None:
                skip_above = grows
        best_params = dict(best.params)
        if stopped:
            break
    if not no_worse(best.quality, default.quality):  # never trade one score for another
        fair = [t for t in trials if no_worse(t.quality, default.quality)]
        best = min(fair, key=lambda t: t.objective) if fair else default
    result = TuneResult(method, dict(base or {}), trials, best, default, 0.0, stopped, sample=sample)
    if (use_obj or sample is not None) and best is not default:
        _check_as_user(result, pair, stars, cancel, psfs, say)
    result.seconds = time.perf_counter() - t_start
    return result


def _check_as_user(result: TuneResult, pair, stars, cancel, psfs, say) -> None:
    """Run the base and the best settings on the whole frame as a user will (the method picks
    its own stars, not the fit half) and keep the base unless the best is no worse on every
    score there.

    The trials fit on half the stars and are scored on regions, so their scores are not
    those the user's runs will have; this check (two more runs, beyond the budget) makes
    "no worse" hold as used."""
    base_run = _run_trial(pair, result.method, result.default.params, stars, False, cancel, psfs)
    best_run = _run_trial(pair, result.method, result.best.params, stars, False, cancel, psfs)
    result.as_user = (base_run, best_run)
    if not no_worse(best_run.quality, base_run.quality):
        say("    as the user will run it (own stars) the best is worse on some score: "
            "the base settings are kept")
        result.best = result.default


#: Ideal value of each score for "no worse" (distance to it may not grow); None: not compared.
_IDEAL = {"robust_std": 1.0, "peak_median": 0.6745, "peak_p95": 1.96, "flux_left": 0.0,
          "kernel_sum_spread": None, "background_left": 0.0, "candidates_per_mpix": 0.0}


#: Smallest tolerated move away from the ideal per score (measurement noise), in its units.
_FLOOR = {"robust_std": 0.02, "peak_median": 0.02, "peak_p95": 0.05, "flux_left": 0.002,
          "background_left": 0.02, "candidates_per_mpix": 1.0}


def no_worse(quality: dict, reference: dict, rel: float = 0.05, floor: Optional[float] = None) -> bool:
    """True when no score of ``quality`` is farther from its ideal than ``reference``'s
    (by more than ``rel`` of the reference's distance or the score's noise floor,
    :data:`_FLOOR`, e.g. 0.002 of flux left; ``floor`` replaces every floor). A score the
    reference has and ``quality`` lacks (missing or NaN) is worse. The kernel sum and its
    spread are not compared: they measure the field, not the fit."""
    q = (quality or {}).get("metrics") or {}
    r = (reference or {}).get("metrics") or {}
    if not r:
        return bool(q)
    for key, ideal in _IDEAL.items():
        if ideal is None or r.get(key) is None or not math.isfinite(r[key]):
            continue
        if q.get(key) is None or not math.isfinite(q[key]):
            return False
        d_new, d_ref = abs(q[key] - ideal), abs(r[key] - ideal)
        slack = max(rel * d_ref, _FLOOR[key] if floor is None else floor)
        if key == "flux_left" and floor is None:  # the scored stars' scatter (scorecard errors)
            slack = max(slack, math.hypot(*(float(((d or {}).get("errors") or {}).get(key) or 0.0)
                                            for d in (quality, reference))))
        if d_new > d_ref + slack:
            return False
    return True


def describe_changes(changes: dict) -> str:
    """``'ko=2, rel_r=3'`` (HOTPANTS ``extra`` and ZOGY ``psf_options`` listed by name)."""
    return ", ".join(f"{k}={v}" for k, v in _flatten(changes).items())


def diff_params(base: dict, params: dict) -> dict:
    """Flat ``{name: value}`` of what ``params`` changes against ``base`` (``extra`` by option)."""
    old = _flatten(base or {})
    return {k: v for k, v in _flatten(params).items() if old.get(k, _MISSING) != v}


def _flatten(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if k in ("extra", "psf_options") and isinstance(v, dict):
            out.update({kk: vv for kk, vv in v.items()})
        elif k != "obj":
            out[k] = v
    return out


def _fmt(v) -> str:
    return "  n/a" if v is None else f"{v:5.2f}"


def _line(i, t: Trial) -> str:
    m = (t.quality or {}).get("metrics") or {}
    what = describe_changes(t.changes) or "(base settings)"
    if t.error:
        return f"{i:3d} {t.stage:<17} {what:<44} failed: {t.error}"
    return (f"{i:3d} {t.stage:<17} {what:<44} {_fmt(m.get('peak_median'))} {_fmt(m.get('peak_p95'))} "
            f"{_fmt(m.get('robust_std'))} {_fmt(t.objective)} {t.seconds:6.1f}")


def format_table(result: TuneResult) -> str:
    """The trials as a text table, best marked with ``*``."""
    head = f"  # {'stage':<17} {'changes':<44} {'med':>5} {'p95':>5} {'rstd':>5} {'obj':>5} {'sec':>6}"
    lines = [head]
    for i, t in enumerate(result.trials, 1):
        lines.append(("*" if t is result.best else " ") + _line(i, t)[1:])
    lines.append(f"{len(result.trials)} runs in {result.seconds:.1f} s"
                 + (" (stopped by the budget)" if result.stopped_by_budget else ""))
    lines.append("trials scored on " + (result.sample.describe() if result.sample is not None
                                        else "the whole frame"))
    if result.as_user is not None:
        m0, m1 = ((t.quality or {}).get("metrics") or {} for t in result.as_user)
        lines.append(f"whole frame as the user runs it: base {_fmt(m0.get('peak_median'))} /"
                     f"{_fmt(m0.get('peak_p95'))}, best {_fmt(m1.get('peak_median'))} /"
                     f"{_fmt(m1.get('peak_p95'))} (median / p95 at star peaks)")
    return "\n".join(lines)
