"""Preset files: round trips, the stable hash, clear errors, and "Copy as Python"."""

import ast
import tomllib

import numpy as np
import pytest

import diffgui
from diffgui.app import presets as pr
from diffgui.engine import params as P
from diffgui.engine.errors import InputError

VALUES = {
    "zogy": {"image_gain": 2.0, "nx": 2, "err": True, "dx": 0.1, "fit_shift": False,
             "psf_options": {"order": 1}},
    "sfft": {"kernel_shape": [9, 9], "kernel_poly_order": 1, "flux_poly_order": 0, "sigma_clip": None},
    "hotpants": {"template_gain": None, "rel_r": 2.5, "extra": {"ko": 1, "ng": [3, 6, 0.7, 4, 1.5, 2, 3.0],
                                                                  "ft": 10.0}},
}


@pytest.mark.parametrize("method", sorted(VALUES))
def test_round_trip_keeps_every_value_and_the_hash(tmp_path, method):
    path = tmp_path / f"{method}.toml"
    saved = pr.save_preset(path, method, VALUES[method], name="tuned", description="for the test")
    doc = tomllib.loads(path.read_text())
    assert doc["diffgui"]["schema"] == pr.SCHEMA_VERSION and doc["diffgui"]["version"] == diffgui.__version__
    assert doc["preset"]["method"] == method and doc["preset"]["hash"] == saved.hash
    loaded = pr.load_preset(path)
    assert loaded.method == method and loaded.name == "tuned" and loaded.description == "for the test"
    assert loaded.params == P.validate(method, VALUES[method])
    assert loaded.hash == saved.hash
    assert loaded.call_kwargs() == P.call_kwargs(method, P.validate(method, VALUES[method]))


def test_none_survives_toml_even_where_the_default_is_not_none(tmp_path):
    assert P.defaults("hotpants")["template_gain"] == 1000
    p = pr.save_preset(tmp_path / "h.toml", "hotpants", {"template_gain": None, "extra": {"r": None, "ko": 0}})
    back = pr.load_preset(p.path)
    assert back.params["template_gain"] is None
    assert back.params["extra"] == {"r": None, "ko": 0}
    assert "template_gain" in tomllib.loads(open(p.path).read())["preset"]["unset"]


def test_hash_is_stable_and_sensitive():
    h = pr.preset_hash("sfft", {})
    assert h == pr.preset_hash("SFFT", P.defaults("sfft"))                     # defaults spelled out
    assert h == pr.preset_hash("sfft", {"kernel_shape": [7, 7], "ridge": 1e-6})  # list vs tuple
    assert h == pr.preset_hash("sfft", {"flux_penalty": 1000})                 # int vs float
    assert h == pr.preset_hash("sfft", {"get_kernel": True, "verbose": print})  # outputs and logging
    assert h != pr.preset_hash("sfft", {"ridge": 2e-6})
    assert h != pr.preset_hash("zogy", {})
    assert len(h) == 12 and int(h, 16) >= 0


def _write(tmp_path, text, name="p.toml"):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


GOOD = '[diffgui]\nkind = "preset"\nschema = 1\nversion = "0.1.0"\n\n[preset]\nmethod = "sfft"\n\n[params]\n'


@pytest.mark.parametrize("text, message", [
    ("[diffgui\nschema = 1\n", "not valid TOML.*line 1"),
    (b"SIMPLE  =                    T / conforming FITS", "is a FITS file, not a diffgui preset"),
    ('{"method": "zogy"}', "is a JSON file"),
    ('[tool.black]\nline-length = 88\n', r"no \[diffgui\] table \(found \[tool\]\)"),
    ('[diffgui]\nkind = "labels"\nschema = 1\n', "'labels' file, not a preset"),
    ('[diffgui]\nschema = 7\nversion = "9.0"\n[preset]\nmethod = "sfft"\n', "schema 7.*upgrade diffgui"),
    ('[diffgui]\nschema = "one"\n', "schema must be an integer"),
    ('[diffgui]\nschema = 1\n[preset]\nmethod = "magic"\n', "unknown method 'magic'"),
    ('[diffgui]\nschema = 1\n', r"no \[preset\] table"),
    (b"\xff\xfe\x00p\x00r", "binary file|not a text file"),
])
def test_malformed_and_foreign_files_give_clear_errors(tmp_path, text, message):
    p = _write(tmp_path, text)
    with pytest.raises(pr.PresetError, match=message) as exc:
        pr.load_preset(p)
    assert str(p) in str(exc.value)


def test_bad_values_name_every_field(tmp_path):
    p = _write(tmp_path, GOOD + 'ridge = -1\nkernel_shape = [8, 7]\nkernl_poly_order = 1\nobj_size = "big"\n'
                                'obj = 3\n')
    with pytest.raises(P.ParamError) as exc:
        pr.load_preset(p)
    probs = exc.value.problems
    assert set(probs) == {"ridge", "kernel_shape", "kernl_poly_order", "obj_size", "obj"}
    assert "did you mean 'kernel_poly_order'" in probs["kernl_poly_order"]
    assert "preset" in probs["obj"]
    assert str(p) in str(exc.value)


def test_missing_file_folder_and_unset_conflicts(tmp_path):
    with pytest.raises(pr.PresetError, match="not found"):
        pr.load_preset(tmp_path / "nope.toml")
    with pytest.raises(pr.PresetError, match="folder"):
        pr.load_preset(tmp_path)
    p = _write(tmp_path, GOOD.replace('method = "sfft"', 'method = "sfft"\nunset = ["ridge"]') + "ridge = 1e-5\n")
    with pytest.raises(P.ParamError, match="ridge: is listed in preset.unset"):
        pr.load_preset(p)


def test_save_refuses_bad_values_and_overwrites_only_when_asked(tmp_path):
    path = tmp_path / "x.toml"
    with pytest.raises(P.ParamError, match="ridge"):
        pr.save_preset(path, "sfft", {"ridge": -1})
    assert not path.exists()
    pr.save_preset(path, "sfft", {})
    with pytest.raises(FileExistsError):
        pr.save_preset(path, "sfft", {"ridge": 1e-3})
    pr.save_preset(path, "sfft", {"ridge": 1e-3}, overwrite=True)
    assert pr.load_preset(path).params["ridge"] == 1e-3
    with pytest.raises(InputError, match="unknown subtraction method"):
        pr.make_preset("nope", {})


@pytest.mark.parametrize("method", sorted(VALUES))
def test_copy_as_python_is_the_equivalent_call(method, monkeypatch):
    import diffgui.engine as engine

    text = pr.as_python_call(method, VALUES[method])
    tree = ast.parse(text)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert calls[0].func.id == f"run_{method}"
    seen = {}

    def fake(image, template, **kwargs):
        seen.update(kwargs)
        n = (2 if method == "zogy" else 1) + sum((2 if k == "get_Fpsf" else 1) * bool(v)  # Fpsf and its error
                                                 for k, v in kwargs.items() if k.startswith("get_"))
        return [np.zeros(1)] * n

    monkeypatch.setattr(engine, f"run_{method}", fake)
    ns = {"image": np.zeros((4, 4)), "template": np.zeros((4, 4))}
    exec(compile(text, "<copy-as-python>", "exec"), ns)
    # the engine receives exactly the preset's values (the ones left out are its defaults)
    got = {k: v for k, v in seen.items() if not k.startswith("get_")}
    want = P.call_kwargs(method, P.validate(method, VALUES[method]))
    defaults = P.call_kwargs(method, P.validate(method, {}))
    assert pr._canonical({**defaults, **got}) == pr._canonical(want)
    assert set(got) < set(want)  # only what differs from the defaults is written out
    assert all(seen[k] for k in seen if k.startswith("get_"))
    assert "# preset hash " + pr.preset_hash(method, VALUES[method]) in text
