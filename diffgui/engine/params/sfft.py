"""Specs of ``run_sfft``'s parameters and their cross-parameter rules."""

from __future__ import annotations

from diffgui.engine.params.spec import _CANCEL, _MEMORY_LIMIT, _VERBOSE, ParamSpec, _gain, _get, _inputs, _noise_specs

_SFFT = _inputs("from the image and image_gain (template: template_gain)") + [
    _gain("image_gain", None, "science image"),
    _gain("template_gain", None, "template"),
    ParamSpec("kernel_shape", "tuple_int", (7, 7), "Kernel size (ky, kx); both odd.",
              "Kernel", "px", (1, None), nargs=2, common=True),
    ParamSpec("kernel_poly_order", "int", 2, "Polynomial order of the kernel's spatial variation.",
              "Kernel", "", (0, None), common=True),
    ParamSpec("bg_poly_order", "int", 2, "Polynomial order of the differential background.",
              "Kernel", "", (0, None), common=True),
    ParamSpec("flux_poly_order", "int", 1,
              "Polynomial order of the kernel sum (flux scale); <= kernel_poly_order.",
              "Kernel", "", (0, None), common=True),
    ParamSpec("flux_penalty", "float", 1000.0, "Weight of the kernel-sum constraint.",
              "Fitting", "", (0, None)),
    ParamSpec("ridge", "float", 1e-06, "Tikhonov regularisation, relative to the system scale.",
              "Fitting", "", (0, None)),
    ParamSpec("sigma_clip", "float", 3.0, "Outlier rejection threshold; 0 or None = no clipping.",
              "Fitting", "sigma", (0, None), nullable=True, common=True),
    ParamSpec("max_iter", "int", 5, "Maximum number of fit/clip passes.", "Fitting", "",
              (1, None)),
    ParamSpec("obj", "table", None,
              "Objects (x, y columns) around which the kernel is fitted; None = whole image.",
              "Objects", nullable=True, editable=False, persist=False),
    ParamSpec("obj_size", "int", None,
              "Half-size of the fit region around each object; None = 3 x median FWHM or 15.",
              "Objects", "px", (1, None), nullable=True),
    _get("get_convolved", "the convolved template"),
    _get("get_scaled", "the noise-normalised difference"),
    _get("get_noise", "the difference noise map"),
    _get("get_kernel", "the fit result (kernel coefficients)"),
    _VERBOSE,
    _CANCEL,
    ParamSpec("decorrelate", "bool", False,
              "Whiten the difference noise (decorrelation kernel, as the SFFT authors do).",
              "Outputs", keyword_only=True),
    ParamSpec("fit_weights", "choice", "noise",
              "Fit weights: inverse variance of the noise maps, or uniform (bright stars count more).",
              "Fitting", choices=("noise", "uniform"), keyword_only=True),
    *_noise_specs(),
    _MEMORY_LIMIT,
]



def _rules_sfft(v, problems, ok):
    if ok("kernel_shape") and any(k % 2 == 0 for k in v["kernel_shape"]):
        problems["kernel_shape"] = f"both sizes must be odd, got {v['kernel_shape']}"
    if ok("flux_poly_order", "kernel_poly_order") and \
            v["flux_poly_order"] > v["kernel_poly_order"]:
        problems["flux_poly_order"] = (f"must be <= kernel_poly_order "
                                       f"({v['kernel_poly_order']}), got {v['flux_poly_order']}")

