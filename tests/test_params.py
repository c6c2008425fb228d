"""Tests of the declarative parameter specs (diffgui.engine.params)."""

import ast
import inspect
import json
import re

import numpy as np
import pytest

from diffgui.engine import params, subtraction
from diffgui.engine.errors import InputError

METHODS = ("hotpants", "zogy", "sfft")
from shared_paths import SHARED  # noqa: E402
HOTPANTS_MD = SHARED / "design" / "hotpants.md"
SEED = SHARED / "seed" / "000_db69ccd91d0ddcc1.txt"


def _problems(method, values):
    with pytest.raises(params.ParamError) as info:
        params.validate(method, values)
    return info.value


def assert_names_all(err, fields):
    """Every field is in err.problems and named in the message."""
    assert set(fields) <= set(err.problems), (fields, err.problems)
    for f in fields:
        assert f in str(err)


# ---- specs against the real signatures --------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_specs_match_signature(method):
    sig = inspect.signature(getattr(subtraction, f"run_{method}"))
    sig_params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    specs = [s for s in params.method_specs(method) if s.in_signature]
    assert [s.name for s in specs] == [p.name for p in sig_params]
    for s, p in zip(specs, sig_params):
        assert s.required == (p.default is p.empty), s.name
        if not s.required:
            # Same value and same Python type as the signature's literal.
            assert s.default == p.default and type(s.default) is type(p.default), s.name
        assert s.keyword_only == (p.kind is p.KEYWORD_ONLY), s.name
    has_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    outside = [s.name for s in params.method_specs(method) if not s.in_signature]
    kwarg_fields = list(params.ZOGY_KWARG_NAMES) if method == "zogy" else []
    assert outside == (["psf_options"] + kwarg_fields if has_kwargs else [])


def _seed_signature(method):
    text = SEED.read_text()
    m = re.search(rf"run_{method}\((.*?)\)\[source\]", text)
    fn = ast.parse(f"def f({m.group(1)}): pass").body[0]
    args = fn.args
    names = [a.arg for a in args.args]
    values = [None] * (len(names) - len(args.defaults))
    values += [ast.literal_eval(d) for d in args.defaults]
    return list(zip(names, values)), args.kwarg is not None


@pytest.mark.skipif(not SEED.exists(), reason="seed API text not available")
@pytest.mark.parametrize("method", METHODS)
def test_specs_match_seed(method):
    seed, has_kwargs = _seed_signature(method)
    specs = [s for s in params.method_specs(method) if s.in_signature and not s.keyword_only]
    assert [(s.name, s.default) for s in specs] == seed
    assert has_kwargs == (method == "zogy")


@pytest.mark.parametrize("method", METHODS)
def test_spec_fields_are_consistent(method):
    specs = params.method_specs(method)
    assert len({s.name for s in specs}) == len(specs)
    for s in specs:
        assert s.type in params.TYPES
        assert s.help and "\n" not in s.help and s.group
        if s.type in ("array", "table", "callable", "logger", "psf"):
            assert not s.editable and not s.persist, s.name
        if s.default is None and not s.required:
            assert s.nullable, s.name
    by_name = {s.name: s for s in specs}
    assert not by_name["cancel"].persist and by_name["cancel"].keyword_only
    assert not by_name["verbose"].editable
    assert any(s.common for s in specs) and any(not s.common for s in specs)


def test_method_lookup():
    assert [s.name for s in params.method_specs("SFFT")] == \
        [s.name for s in params.method_specs(" sfft ")]
    assert params.METHODS == METHODS and set(params.METHOD_TITLES) == set(METHODS)
    for bad in ("alard", None, 3):
        with pytest.raises(InputError, match="hotpants, zogy, sfft"):
            params.method_specs(bad)
    with pytest.raises(InputError, match="unknown subtraction method"):
        params.validate("psfex", {})


# ---- defaults and validation ------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_defaults_round_trip(method):
    d = params.defaults(method)
    assert "image" not in d and "template" not in d
    assert params.validate(method, d) == d
    assert params.validate(method, {}) == d


def test_every_spec_default_passes_its_own_check():
    for method in METHODS:
        for s in params.method_specs(method):
            if not s.required:
                assert params.coerce(s, s.default) == s.default, (method, s.name)
    opts = {s.name: s.default for s in params.hotpants_option_specs(include_fixed=False)}
    cleaned = params.validate_hotpants_extra(opts)
    assert cleaned["ng"] == (3, 6, 0.7, 4, 1.5, 2, 3.0)
    assert cleaned["r"] == 10 and cleaned["rss"] == 15 and cleaned["c"] == "b"


def test_type_conversions():
    v = params.validate("sfft", {"kernel_shape": [9, 5], "max_iter": 3.0, "ridge": 0,
                                 "obj_size": np.int64(12), "sigma_clip": None})
    assert v["kernel_shape"] == (9, 5) and type(v["max_iter"]) is int
    assert v["ridge"] == 0.0 and type(v["ridge"]) is float and v["obj_size"] == 12
    v = params.validate("hotpants", {"backend": "Native", "err": True,
                                     "extra": {"-KO": 1, "c": "T", "ng": [3, 6, 0.5, 4, 1, 2, 2]}})
    assert v["backend"] == "native" and v["err"] is True
    assert v["extra"] == {"ko": 1, "c": "t", "ng": (3, 6, 0.5, 4, 1.0, 2, 2.0)}
    img = np.zeros((8, 8))
    v = params.validate("zogy", {"image": img, "err": img, "verbose": print,
                                 "cancel": lambda: False})
    assert v["image"] is img and v["err"] is img and v["verbose"] is print


def test_type_errors_all_named():
    err = _problems("zogy", {"dx": "0.5", "nx": 1.5, "fit_scale": 1, "verbose": "loud",
                             "image_obj": 3, "cancel": True, "image_psf": "gauss",
                             "nthreads": True, "err": "yes"})
    assert_names_all(err, ["dx", "nx", "fit_scale", "verbose", "image_obj", "cancel",
                           "image_psf", "nthreads", "err"])
    assert "coerce" in err.problems["dx"]


def test_bounds_and_choices_all_named():
    err = _problems("hotpants", {"image_fwhm": 0, "template_fwhm": -1.0, "image_gain": 0.0,
                                 "rel_r": -3, "nx": 0, "ny": 0, "backend": "gpu",
                                 "_exe": "", "rel_rss": float("nan")})
    assert_names_all(err, ["image_fwhm", "template_fwhm", "image_gain", "rel_r", "nx", "ny",
                           "backend", "_exe", "rel_rss"])
    assert "> 0" in err.problems["image_fwhm"] and ">= 1" in err.problems["nx"]
    assert "'auto', 'exe', 'native'" in err.problems["backend"]
    err = _problems("zogy", {"psf_clean": 1.5, "overlap": -1, "scale": 0, "dy": -0.1})
    assert_names_all(err, ["psf_clean", "overlap", "scale", "dy"])
    assert "[0, 1]" in err.problems["psf_clean"]


def test_unknown_names_with_suggestions():
    err = _problems("sfft", {"kernel_shap": (7, 7), "sigma": 3, "max_iter": 0})
    assert_names_all(err, ["kernel_shap", "sigma", "max_iter"])
    assert "kernel_shape" in err.problems["kernel_shap"]
    err = _problems("zogy", {"max_ellipticity": 0.5})
    assert "psf_options" in err.problems["max_ellipticity"]
    assert params.validate("zogy", {"psf_size": 25})["psf_size"] == 25  # a PSF field


def test_sfft_cross_field_rules():
    err = _problems("sfft", {"kernel_shape": (6, 7), "flux_poly_order": 3, "max_iter": 0,
                             "obj_size": 0})
    assert_names_all(err, ["kernel_shape", "flux_poly_order", "max_iter", "obj_size"])
    assert "odd" in err.problems["kernel_shape"]
    assert "kernel_poly_order" in err.problems["flux_poly_order"]
    # equal orders are fine, a lower kernel order makes the default flux order invalid
    params.validate("sfft", {"kernel_poly_order": 1, "flux_poly_order": 1})
    err = _problems("sfft", {"kernel_poly_order": 0})
    assert list(err.problems) == ["flux_poly_order"]
    err = _problems("sfft", {"kernel_shape": (7, 7, 7)})
    assert "2 values" in err.problems["kernel_shape"]


def test_hotpants_rel_rss_rule():
    err = _problems("hotpants", {"rel_r": 3, "rel_rss": 2})
    assert "rel_r" in err.problems["rel_rss"]
    # explicit r and rss in extra take over
    params.validate("hotpants", {"rel_r": 3, "rel_rss": 2, "extra": {"r": 8, "rss": 12}})


def test_hotpants_extra_rules_all_named():
    extra = {"r": 10, "rss": 8, "sft": 1.5, "nft": -0.1, "tu": 100, "tl": 200,
             "iu": 5, "il": 5, "rf": "regions.txt", "ssf": "stamps.txt", "rkw": ("REG", 2),
             "ng": [3, 6, 0.7, 4, 1.5], "outim": "diff.fits", "bogus": 1, "fom": "x",
             "gd": (10, 5, 0, 0), "ks": 0}
    with pytest.raises(params.ParamError) as info:
        params.validate_hotpants_extra(extra)
    err = info.value
    fields = ["extra." + k for k in ("rss", "sft", "nft", "tu", "iu", "rf", "ng", "outim",
                                     "bogus", "fom", "gd", "ks")]
    assert_names_all(err, fields)
    assert "ssf" in err.problems["extra.rf"] and "rkw" in err.problems["extra.rf"]
    assert "N = 3 needs 7" in err.problems["extra.ng"]
    # the same problems come out of validate(), plus method-level ones
    err2 = _problems("hotpants", {"extra": extra, "nx": 0})
    assert_names_all(err2, fields + ["nx"])
    # rf with obj: stamps from objects would be passed as -ssf
    err3 = _problems("hotpants", {"extra": {"rf": "r.txt"}, "obj": {"x": [1.0], "y": [2.0]}})
    assert "obj" in err3.problems["extra.rf"]


def test_hotpants_extra_good_values():
    x = params.validate_hotpants_extra({"R": 5, "-rss": 7, "tu": 5e4, "tl": -10, "iuk": 4e4,
                                        "rkw": "REGION 4", "pca": ["a.fits", "b.fits"],
                                        "gd": [0, 100, 0, 0], "afssc": 0, "allm": None})
    assert x["r"] == 5 and x["rss"] == 7 and x["rkw"] == ("REGION", 4)
    assert x["pca"] == ("a.fits", "b.fits") and x["gd"] == (0, 100, 0, 0) and x["allm"] is None
    assert params.validate_hotpants_extra(None) is None
    with pytest.raises(params.ParamError, match="extra.pca"):
        params.validate_hotpants_extra({"pca": [3, "a.fits"]})
    with pytest.raises(params.ParamError, match="extra"):
        params.validate("hotpants", {"extra": [("r", 5)]})


def test_zogy_psf_options():
    v = params.validate("zogy", {"psf_options": {"order": 1, "psf_size": 25}})
    kw = params.call_kwargs("zogy", v)
    assert kw["order"] == 1 and kw["psf_size"] == 25 and "psf_options" not in kw
    err = _problems("zogy", {"psf_options": {"nx": 2, "bad key": 1}})
    assert_names_all(err, ["psf_options.nx", "psf_options.bad key"])


@pytest.mark.parametrize("method", METHODS)
def test_call_kwargs_bind_to_signature(method):
    fn = getattr(subtraction, f"run_{method}")
    kw = params.call_kwargs(method, params.validate(method, {}))
    bound = inspect.signature(fn).bind(np.zeros((8, 8)), np.zeros((8, 8)), **kw)
    assert set(kw) <= set(bound.arguments) | set(bound.arguments.get("kwargs", {}))


# ---- text input -------------------------------------------------------------------------

def test_coerce_from_text():
    spec = lambda m, n: params.get_spec(m, n)  # noqa: E731
    assert params.coerce(spec("hotpants", "rel_r"), " 3.5 ") == 3.5
    assert params.coerce(spec("hotpants", "nx"), "4") == 4
    assert params.coerce(spec("hotpants", "nx"), "4.0") == 4
    assert params.coerce(spec("hotpants", "ny"), "None") is None
    assert params.coerce(spec("hotpants", "get_noise"), "yes") is True
    assert params.coerce(spec("hotpants", "get_noise"), "off") is False
    assert params.coerce(spec("hotpants", "err"), "true") is True
    assert params.coerce(spec("hotpants", "backend"), "EXE") == "exe"
    assert params.coerce(spec("hotpants", "_exe"), "/opt/bin/hotpants") == "/opt/bin/hotpants"
    for text in ("9,7", "9x7", "(9, 7)", "9 7"):
        assert params.coerce(spec("sfft", "kernel_shape"), text) == (9, 7)
    assert params.coerce(spec("hotpants", "extra.ng"), "3 6 0.5 4 1 2 2.0") == \
        (3, 6, 0.5, 4, 1.0, 2, 2.0)
    assert params.coerce(spec("hotpants", "extra.gd"), "1,2,3,4") == (1, 2, 3, 4)
    assert params.coerce(spec("hotpants", "extra.rkw"), "REG 2") == ("REG", 2)
    assert params.coerce(spec("hotpants", "extra.allm"), "true") is True
    assert params.coerce(spec("zogy", "psf_options"), '{"order": 2}') == {"order": 2}


@pytest.mark.parametrize("method,name,text,expect", [
    ("hotpants", "rel_r", "three", "number"),
    ("hotpants", "nx", "2.5", "integer"),
    ("hotpants", "nx", "0", ">= 1"),
    ("hotpants", "rel_r", "none", "None"),
    ("sfft", "get_kernel", "maybe", "true or false"),
    ("sfft", "kernel_shape", "7", "2 values"),
    ("sfft", "obj", "stars.cat", "cannot be given as text"),
    ("zogy", "err", "noise.txt", "FITS file name"),  # noise.fits is a valid map file (issue 11)
    ("hotpants", "extra.sft", "2", "[0, 1]"),
    ("hotpants", "extra.ng", "2 6 0.7", "N = 2"),
    ("hotpants", "extra.c", "x", "'t', 'i', 'b'"),
])
def test_coerce_errors_name_the_field(method, name, text, expect):
    with pytest.raises(params.ParamError) as info:
        params.coerce(params.get_spec(method, name), text)
    (field, msg), = info.value.problems.items()
    assert field == name and expect in msg


def test_coerce_texts_routes_and_collects():
    v = params.coerce_texts("hotpants", {"rel_r": "2.5", "extra.ko": "1", "extra.C": "t",
                                         "err": "true"})
    assert v == {"rel_r": 2.5, "extra": {"ko": 1, "c": "t"}, "err": True}
    v = params.coerce_texts("zogy", {"psf_options.order": "1", "psf_options.kind": "moffat"})
    assert v == {"psf_options": {"order": 1, "kind": "moffat"}}
    with pytest.raises(params.ParamError) as info:
        params.coerce_texts("hotpants", {"rel_r": "x", "extra.nope": "1", "nxx": "2",
                                         "extra.r": "-1"})
    assert_names_all(info.value, ["rel_r", "extra.nope", "nxx", "extra.r"])


def test_merge_values_then_validate():
    preset = {"rel_r": 2.0, "extra": {"ko": 1, "bgo": 1}}
    merged = params.merge_values(preset, params.coerce_texts("hotpants", {"extra.ko": "0"}))
    assert merged == {"rel_r": 2.0, "extra": {"ko": 0, "bgo": 1}}
    assert preset["extra"]["ko"] == 1
    assert params.validate("hotpants", merged)["extra"] == {"ko": 0, "bgo": 1}


# ---- presets ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_preset_values_round_trip_through_json(method):
    values = params.validate(method, {"err": np.ones((8, 8)), "template_err": True,
                                      "cancel": lambda: False, "verbose": print})
    saved = params.preset_values(method, values)
    text = json.dumps(saved)
    assert "cancel" not in saved and "verbose" not in saved and "err" not in saved
    assert saved["template_err"] is True and "mask" not in saved
    again = params.validate(method, json.loads(text))
    for name, value in saved.items():
        assert params.preset_values(method, {name: again[name]})[name] == value


# ---- HOTPANTS options -------------------------------------------------------------------

def _documented_hotpants_options():
    text = HOTPANTS_MD.read_text()
    section = text.split("## 1.", 1)[1].split("\n## 2.", 1)[0]
    total = int(re.search(r"all (\d+) parsed", section).group(1))
    names = []
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 4 or not line.startswith("|"):
            continue
        for span in re.findall(r"`([^`]*)`", cells[2]):
            names += re.findall(r"(?:^|\s)-([A-Za-z]+)", span)
    return total, names


@pytest.mark.skipif(not HOTPANTS_MD.exists(), reason="design doc hotpants.md not available")
def test_every_documented_hotpants_option_has_a_spec():
    total, documented = _documented_hotpants_options()
    assert len(documented) == len(set(documented)) == total == 75
    have = {s.name for s in params.hotpants_option_specs()}
    missing = [n.lower() for n in documented if n.lower() not in have]
    assert not missing, f"HOTPANTS options without a spec: {missing}"
    assert have == {n.lower() for n in documented}


def test_hotpants_option_specs_shape():
    specs = params.hotpants_option_specs()
    by = {s.name: s for s in specs}
    assert len(by) == len(specs) == 75
    assert all(s.flag == s.name and s.type in params.TYPES for s in specs)
    assert by["ng"].nargs == "+" and by["gd"].nargs == 4 and by["rkw"].nargs == 2
    assert by["allm"].nargs == 0 and by["r"].nargs == 1
    fixed = {s.name for s in specs if s.wrapper == "fixed"}
    assert {"inim", "tmplim", "outim", "imi", "tmi", "ini", "tni", "oni", "savexy"} <= fixed
    assert all(not by[n].editable for n in fixed)
    assert not fixed & {s.name for s in params.hotpants_option_specs(include_fixed=False)}
    assert by["r"].wrapper == "derived" and by["rss"].default == 15 and by["tu"].default == 25000
    assert by["c"].default == "b" and by["n"].default == "t"
    with pytest.raises(params.ParamError) as info:
        params.validate_hotpants_extra({n: "x.fits" for n in ("inim", "outim", "tni")})
    assert_names_all(info.value, ["extra.inim", "extra.outim", "extra.tni"])


def test_hotpants_argv():
    argv = params.hotpants_argv({"inim": "a b.fits", "ng": (3, 6, 0.5, 4, 1.0, 2, 2.0),
                                 "pca": ["k0.fits", "k1.fits"], "rkw": ("REG", 3),
                                 "allm": True, "nc": False, "ko": 0, "fi": 1e-30,
                                 "gd": [1, 2, 3, 4], "c": "T", "kcs": None})
    assert argv == ["-inim", "a b.fits", "-ng", "3", "6", "0.5", "4", "1.0", "2", "2.0",
                    "-pca", "2", "k0.fits", "k1.fits", "-rkw", "REG", "3", "-allm",
                    "-ko", "0", "-fi", "1e-30", "-gd", "1", "2", "3", "4", "-c", "t"]
    with pytest.raises(params.ParamError) as info:
        params.hotpants_argv({"r": "big", "nope": 1})
    assert_names_all(info.value, ["extra.r", "extra.nope"])
