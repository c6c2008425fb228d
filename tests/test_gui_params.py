"""Parameter forms generated from engine/params.py specs."""

import pytest

from diffgui.engine import params
from diffgui.gui.params_form import ParamsForm


@pytest.fixture
def form(qtbot):
    f = ParamsForm()
    qtbot.addWidget(f)
    f.resize(420, 700)
    f.show()
    return f


def _editable(method):
    return [s for s in params.method_specs(method) if s.editable and not s.name.startswith("get_")]


@pytest.mark.parametrize("method", ["hotpants", "zogy", "sfft"])
def test_form_has_every_parameter_and_its_defaults_validate(form, method):
    form.set_method(method)
    names = [spec.name for p, spec, opt in form._params() if not opt]
    assert sorted(names) == sorted(s.name for s in _editable(method) if s.type != "dict")
    assert form.is_valid() and form.problems() == {}
    vals = form.validated()
    ref = params.defaults(method)
    for s in _editable(method):
        assert vals[s.name] == ref[s.name], s.name
    # common parameters first, expanded; the rest collapsed
    groups = form.root.children()
    assert groups[0].name() == "Common" and groups[0].opts.get("expanded", True)
    assert all(not g.opts.get("expanded", True) for g in groups[1:])
    common = {p.name() for p in groups[0].children()}
    assert common == {s.name for s in _editable(method) if s.common and s.type != "dict"}
    # tooltips carry help, unit and bounds
    spec = next(s for s in _editable(method) if s.unit and s.bounds)
    tip = form.param(spec.name).opts["tip"]
    assert spec.help in tip and f"unit: {spec.unit}" in tip and "range:" in tip


def test_hotpants_extra_offers_every_option(form):
    form.set_method("hotpants")
    opts = {spec.name: p for p, spec, opt in form._params() if opt}
    assert set(opts) == {s.name for s in params.hotpants_option_specs()}
    assert opts["inim"].opts["readonly"] and not opts["r"].opts["readonly"]
    assert form.values()["extra"] is None
    form.param("extra.r").setValue("5")
    form.param("extra.ko").setValue("1")
    form.param("extra.c").setValue("t")
    assert form.validated()["extra"] == {"r": 5, "ko": 1, "c": "t"}
    assert set(form.changed_names()) == {"extra.r", "extra.ko", "extra.c"}


def test_invalid_values_are_marked_before_running(form):
    form.set_method("sfft")
    form.param("flux_poly_order").setValue(3)  # > kernel_poly_order
    assert "flux_poly_order" in form.problems() and not form.is_valid()
    item = next(iter(form.param("flux_poly_order").items))
    assert item.background(0).color().red() == 255
    assert "kernel_poly_order" in item.toolTip(0)
    assert form.problem_label.isVisibleTo(form)
    form.param("flux_poly_order").setValue(1)
    assert form.is_valid()
    form.param("kernel_shape").setValue("6, 7")  # even kernel
    assert "kernel_shape" in form.problems()
    form.param("ridge").setValue("not a number")
    assert "ridge" in form.problems()
    with pytest.raises(params.ParamError, match="ridge"):
        form.validated()


def test_invalid_hotpants_option_is_marked(form):
    form.set_method("hotpants")
    form.param("extra.ssig").setValue("-1")
    assert "extra.ssig" in form.problems()
    form.param("rel_rss").setValue("1")  # < rel_r
    assert "rel_rss" in form.problems()


def test_changed_indication_and_reset(form):
    form.set_method("zogy")
    p = form.param("dx")
    assert not p.opts["title"].endswith("*")
    p.setValue("0.5")
    assert p.opts["title"].endswith(" *") and form.changed_names() == ["dx"]
    assert form.validated()["dx"] == 0.5
    form.reset_defaults()
    assert form.changed_names() == [] and not p.opts["title"].endswith("*")
    assert form.validated()["dx"] == 0.25


def test_set_values_roundtrip(form):
    form.set_method("sfft")
    form.set_values({"kernel_shape": (9, 9), "ridge": 1e-4, "sigma_clip": None, "image_gain": 2.0})
    v = form.validated()
    assert v["kernel_shape"] == (9, 9) and v["ridge"] == 1e-4 and v["sigma_clip"] is None
    assert v["image_gain"] == 2.0
    assert set(form.changed_names()) == {"kernel_shape", "ridge", "sigma_clip", "image_gain"}
