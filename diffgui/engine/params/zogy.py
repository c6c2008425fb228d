"""Specs of ``run_zogy``'s parameters and their cross-parameter rules."""

from __future__ import annotations

from diffgui.engine.params.spec import (_CANCEL, _MEMORY_LIMIT, _VERBOSE, ParamSpec, _fwhm, _gain, _get, _inputs,
                                        _noise_specs)

_ZOGY = _inputs("from the image and its gain; None also builds it") + [
    ParamSpec("image_psf", "psf", None, "PSF of the science image; None = estimate it.",
              "PSF", nullable=True, editable=False, persist=False),
    ParamSpec("template_psf", "psf", None, "PSF of the template; None = estimate it.",
              "PSF", nullable=True, editable=False, persist=False),
    _gain("image_gain", None, "science image"),
    _gain("template_gain", None, "template"),
    _fwhm("image_fwhm", "science image", "None = estimate it"),
    _fwhm("template_fwhm", "template", "None = estimate it"),
    ParamSpec("scale", "float", None,
              "Template flux scale relative to the science image; None = from matched objects.",
              "Fitting", "", (0, None), min_exclusive=True, nullable=True, common=True),
    ParamSpec("psf_clean", "float", 0,
              "Zero PSF pixels below this fraction of the peak (0 = keep all).", "PSF", "",
              (0, 1)),
    ParamSpec("dx", "float", 0.25, "Astrometric uncertainty (sigma) along x.", "Fitting",
              "px", (0, None)),
    ParamSpec("dy", "float", 0.25, "Astrometric uncertainty (sigma) along y.", "Fitting",
              "px", (0, None)),
    ParamSpec("nx", "int", 1, "Sub-images along x.", "Tiling", "", (1, None), common=True),
    ParamSpec("ny", "int", None, "Sub-images along y; None = nx.", "Tiling", "", (1, None),
              nullable=True, common=True),
    ParamSpec("overlap", "int", 50, "Overlap of neighbouring sub-images.", "Tiling", "px",
              (0, None)),
    ParamSpec("fit_scale", "bool", True, "Fit the template flux scale.", "Fitting",
              common=True),
    ParamSpec("fit_shift", "bool", True, "Fit a sub-pixel template shift.", "Fitting",
              common=True),
    ParamSpec("good_regions", "array", None,
              "Boolean map of the pixels used for the scale/shift fit.", "Fitting",
              nullable=True, editable=False, persist=False),
    ParamSpec("image_obj", "table", None, "Objects detected on the science image.",
              "Objects", nullable=True, editable=False, persist=False),
    ParamSpec("template_obj", "table", None, "Objects detected on the template.",
              "Objects", nullable=True, editable=False, persist=False),
    _get("get_psf", "the PSF of the difference image"),
    _get("get_Fpsf", "the PSF-photometry flux image and its error"),
    ParamSpec("nthreads", "int", 0, "FFT threads; 0 = all usable cores.", "Execution", "",
              (0, None)),
    _VERBOSE,
    _CANCEL,
    *_noise_specs(),
    _MEMORY_LIMIT,
    ParamSpec("psf_options", "dict", None,
              "Options of the PSF estimation, passed to run_zogy as **kwargs.", "PSF",
              nullable=True, editable=False, in_signature=False),
]

#: run_zogy's ``**kwargs`` that the form shows as fields (PSF estimation and ZOGY
#: options, defaults as in :func:`diffgui.engine.psf.estimate_psf`); ``psf_options``
#: entries override them.
_KWARG_SPECS = [
    ParamSpec("order", "int", 0, "Polynomial degree of the PSF variation across the field.",
              "PSF", "", (0, 3), in_signature=False),
    ParamSpec("sn", "float", 20.0, "Minimum S/N of a PSF star.", "PSF", "", (0, None),
              min_exclusive=True, in_signature=False),
    ParamSpec("thresh", "float", 5.0, "Detection threshold of the PSF-star search.", "PSF",
              "sigma", (0, None), min_exclusive=True, in_signature=False),
    ParamSpec("isolation", "float", 1.5,
              "A neighbour closer than this with over 1 % of the star's flux rejects a PSF star.",
              "PSF", "FWHM", (0, None), in_signature=False),
    ParamSpec("max_contamination", "float", 0.1,
              "Largest neighbour light at the edge of a PSF star's core relative to its own "
              "(raise it in crowded fields).", "PSF", "", (0, None), in_signature=False),
    ParamSpec("max_stars", "int", 300, "At most this many PSF stars (the highest S/N).", "PSF",
              "", (1, None), in_signature=False),
    ParamSpec("psf_size", "int", None, "PSF stamp size; None = 2 ceil(4 FWHM) + 1.", "PSF", "px",
              (3, None), nullable=True, in_signature=False),
    ParamSpec("oversampling", "int", None, "PSF model oversampling; None = from the FWHM.", "PSF",
              "", (1, 8), nullable=True, in_signature=False),
    ParamSpec("background", "choice", "mesh",
              "Background difference removed: mesh = plane fitted with the scale, then the "
              "64 px mesh background of D; none = images taken as background-free.", "Fitting",
              choices=("mesh", "none"), in_signature=False),
    ParamSpec("flux_scale", "choice", "kernel",
              "How fit_scale measures F_r: kernel = sum of a free pixel kernel fitted between the "
              "images (needs no PSF model); fit = ZOGY's least-squares fit per tile.", "Fitting",
              choices=("kernel", "fit"), in_signature=False),
    ParamSpec("cosmics", "bool", True,
              "Mask pixels much sharper than the PSF (cosmic rays, hot pixels) in both images.",
              "Fitting", in_signature=False),
]
_ZOGY += _KWARG_SPECS
#: Names of the fields of :data:`_KWARG_SPECS` (passed to run_zogy as keywords).
ZOGY_KWARG_NAMES = tuple(s.name for s in _KWARG_SPECS)


def _rules_zogy(v, problems, ok):
    if ok("psf_options") and v.get("psf_options"):
        for key in v["psf_options"]:
            if not isinstance(key, str) or not key.isidentifier():
                problems[f"psf_options.{key}"] = "keys must be keyword names"
            elif key in _ZOGY_NAMES and key not in ZOGY_KWARG_NAMES:
                problems[f"psf_options.{key}"] = "is a run_zogy parameter, not a PSF option"



_ZOGY_NAMES = {s.name for s in _ZOGY}
