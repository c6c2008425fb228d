"""Specs of ``run_hotpants``'s parameters and their cross-parameter rules."""

from __future__ import annotations

from diffgui.engine.params.hotpants_options import _check_extra
from diffgui.engine.params.spec import (_CANCEL, _MEMORY_LIMIT, _VERBOSE, ParamSpec, _fwhm, _gain, _get, _inputs,
                                        _noise_specs)

_HOTPANTS = _inputs("from the image and image_gain (template: template_gain)") + [
    ParamSpec("extra", "dict", None,
              "HOTPANTS options by name (see hotpants_option_specs); they override the wrapper's.",
              "Advanced", nullable=True),
    _fwhm("image_fwhm", "science image", "sets r, rss and the ng basis"),
    _fwhm("template_fwhm", "template", "with image_fwhm sets the ng basis"),
    _gain("image_gain", None, "science image"),
    _gain("template_gain", 1000, "template"),
    ParamSpec("rel_r", "float", 3, "Kernel half-width r = ceil(rel_r * image_fwhm).",
              "Kernel", "FWHM", (0, None), min_exclusive=True, common=True),
    ParamSpec("rel_rss", "float", 4,
              "Substamp half-width rss = ceil(rel_rss * image_fwhm); keep >= rel_r.",
              "Kernel", "FWHM", (0, None), min_exclusive=True, common=True),
    ParamSpec("nx", "int", 1, "Independent kernel regions along x.", "Tiling", "",
              (1, None), common=True),
    ParamSpec("ny", "int", None, "Independent kernel regions along y; None = nx.", "Tiling",
              "", (1, None), nullable=True, common=True),
    ParamSpec("obj", "table", None,
              "Objects detected on the science image, used to place the kernel stamps.",
              "Objects", nullable=True, editable=False, persist=False),
    _get("get_convolved", "the convolved template"),
    _get("get_scaled", "the noise-normalised difference"),
    _get("get_noise", "the difference noise map"),
    _get("get_kernel", "the kernel table"),
    _get("get_header", "the HOTPANTS output header"),
    ParamSpec("_tmpdir", "path", None,
              "Folder in which a temporary working folder is made (and removed).",
              "Execution", nullable=True, persist=False),
    ParamSpec("_workdir", "path", None,
              "Folder for the working files, kept after the run (debugging).",
              "Execution", nullable=True, persist=False),
    ParamSpec("_exe", "path", None, "HOTPANTS executable; None = search PATH.",
              "Execution", nullable=True, persist=False),
    _VERBOSE,
    ParamSpec("backend", "choice", "auto",
              "auto = the executable if found, else native; exe = HOTPANTS binary; "
              "native = numpy Alard-Lupton.", "Execution",
              choices=("auto", "exe", "native"), common=True, keyword_only=True),
    _CANCEL,
    *_noise_specs(),
    _MEMORY_LIMIT,
]


def _rules_hotpants(v, problems, ok):
    extra = {}
    if ok("extra"):
        cleaned, extra_problems = _check_extra(v["extra"])
        problems.update(extra_problems)
        extra = cleaned or {}
        if not extra_problems:
            v["extra"] = cleaned
        if extra.get("rf") is not None and "extra.rf" not in problems and ok("obj") \
                and v.get("obj") is not None:
            problems["extra.rf"] = ("cannot be combined with obj (stamps from objects are "
                                    "passed as -ssf)")
    if ok("rel_r", "rel_rss") and v["rel_rss"] < v["rel_r"]:
        # Explicit r and rss in extra make rel_r/rel_rss irrelevant.
        if extra.get("r") is None or extra.get("rss") is None:
            problems["rel_rss"] = (f"must be >= rel_r ({v['rel_r']}), got {v['rel_rss']}: "
                                   "HOTPANTS needs rss >= r")

