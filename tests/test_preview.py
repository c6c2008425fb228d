"""Region preview through the application model (no Qt)."""

import threading
import time

import numpy as np
import pytest

from diffgui.app.pair import Pair
from diffgui.app.preview import MIN_REGION, RegionPreview, margin_for
from diffgui.engine.errors import Cancelled, InputError
from diffgui.engine.simulation import simulate_pair


@pytest.fixture(scope="module")
def pair():
    sim = simulate_pair(shape=(300, 300), n_stars=300, seed=8)
    return Pair(image=sim.image, template=sim.template, name="sim")


def test_bad_regions_are_named(pair):
    pv = RegionPreview(pair)
    with pytest.raises(InputError, match="no preview region"):
        pv.request("sfft", {})
    with pytest.raises(InputError, match="outside"):
        pv.set_region(400, 400, 500, 500)
    with pytest.raises(InputError, match="at least"):
        pv.set_region(10, 10, 10 + MIN_REGION - 5, 100)
    assert pv.set_region(250, 280, 350, 200) == (250, 200, 300, 280)  # clipped, any corner order


def test_margins_follow_the_kernel():
    assert margin_for("hotpants", {"rel_r": 3, "rel_rss": 4}, 4.0) == 12 + 16
    assert margin_for("hotpants", {"extra": {"r": 5, "rss": 9}}) == 14
    assert margin_for("sfft", {"kernel_shape": (11, 11)}, 3.0) == 5 + 6
    assert margin_for("zogy", {"overlap": 50}, 3.0) == 18 + 25


def test_preview_runs_on_the_region_only(pair):
    pv = RegionPreview(pair, fwhm=3.5)
    pv.set_region(100, 80, 228, 208)
    run = pv.request("sfft", {"kernel_shape": (5, 5), "kernel_poly_order": 0, "flux_poly_order": 0,
                              "bg_poly_order": 0})
    assert run.status == "done" and run.results["diff"].shape == (128, 128)
    assert run.provenance["preview"]["region"] == (100, 80, 228, 208)
    d = run.results["diff"] / run.results["noise"]
    assert 0.7 < np.std(d[np.abs(d) < 5]) < 1.3


def test_newer_request_cancels_the_running_one(pair, fake_method):
    pv = RegionPreview(pair)
    pv.set_region(0, 0, 128, 128)
    seen = {}

    def slow():
        try:
            pv.request("fake", {"delay": 3.0})
        except Cancelled as exc:
            seen["cancelled"] = str(exc)

    t = threading.Thread(target=slow)
    t0 = time.perf_counter()
    t.start()
    time.sleep(0.2)
    run = pv.request("fake", {"delay": 0.0})
    t.join(5)
    assert "cancelled" in seen and time.perf_counter() - t0 < 2.5
    assert run.results["diff"].shape == (128, 128)


def test_zogy_edits_reuse_the_psfs_of_the_crop(pair):
    from diffgui.app.preview import _psf_key

    pv = RegionPreview(pair, fwhm=3.0)
    pv.set_region(70, 70, 230, 230)
    pv.request("zogy", {"overlap": 0})
    assert len(pv._psfs) == 1  # the PSFs and star lists of this crop are kept
    edit = pv.request("zogy", {"overlap": 0, "dx": 0.5})  # not a PSF option: served from them
    assert edit.params == {"overlap": 0, "dx": 0.5} and len(pv._psfs) == 1
    fresh = RegionPreview(pair, fwhm=3.0)
    fresh.set_region(70, 70, 230, 230)
    ref = fresh.request("zogy", {"overlap": 0, "dx": 0.5})  # estimated again: the same result
    np.testing.assert_allclose(edit.results["scorr"], ref.results["scorr"], atol=1e-9)
    assert _psf_key({"nx": 2, "fit_shift": False}) == _psf_key({})
    assert _psf_key({"sn": 15.0}) != _psf_key({}) != _psf_key({"psf_options": {"order": 1}})
