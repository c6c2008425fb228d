"""Field diagnostics (diffgui.engine.common.diagnostics): maps and advice."""

import numpy as np
import pytest

from diffgui.engine.common.diagnostics import diagnose_field
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair


def test_varying_psf_gets_spatial_order_advice():
    sim = simulate_pair(shape=(300, 300), n_stars=400, image_fwhm=3.2, template_fwhm=2.4,
                        image_fwhm_gradient=(0.45, 0.0), seed=4)
    d = diagnose_field(sim.image, sim.template, grid=3)
    assert d.n_matched >= 50
    fw = d.maps["science_fwhm"]
    assert fw.shape == (3, 3) and np.all(fw[:, 2] > fw[:, 0])  # grows to the right
    assert d.variation["science_fwhm"] > 0.25
    assert "order of 2" in d.advice[0] and "nx = ny = 3" in d.advice[0]
    assert d.maps["flux_ratio"][1, 1] == pytest.approx(sim.truth.get("flux_scale", 1.1), rel=0.1)


def test_constant_psf_says_so():
    sim = simulate_pair(shape=(300, 300), n_stars=400, seed=5)
    d = diagnose_field(sim.image, sim.template, grid=2)
    assert "nearly constant" in d.advice[0]


def test_too_few_stars_and_bad_input():
    rng = np.random.default_rng(1)
    flat = rng.normal(100, 3, (128, 128))
    with pytest.raises(InputError, match="too few"):
        diagnose_field(flat, flat.copy())
    with pytest.raises(InputError, match="grid"):
        diagnose_field(flat, flat, grid=0)
    with pytest.raises(InputError, match="shape"):
        diagnose_field(flat, flat[:64])
