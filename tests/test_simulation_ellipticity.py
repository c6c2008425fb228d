"""Elliptical PSFs in the simulator: ellipticity and position angle change across the field."""

import numpy as np
import pytest

from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair


def _moments(stamp):
    yy, xx = np.indices(stamp.shape, dtype=float)
    f = stamp / stamp.sum()
    mx, my = (f * xx).sum(), (f * yy).sum()
    qxx, qyy = (f * (xx - mx) ** 2).sum(), (f * (yy - my) ** 2).sum()
    qxy = (f * (xx - mx) * (yy - my)).sum()
    lam = np.linalg.eigvalsh([[qxx, qxy], [qxy, qyy]])
    theta = 0.5 * np.arctan2(2 * qxy, qxx - qyy)
    return 1 - np.sqrt(lam[0] / lam[1]), theta


@pytest.mark.parametrize("psf", ["gaussian", "moffat"])
def test_ellipticity_grows_outwards_and_turns_tangentially(psf):
    sim = simulate_pair(shape=(200, 200), n_stars=20, psf=psf, image_ellipticity=(0.0, 0.3), seed=1)
    e_c, _ = _moments(sim.image_psf(99.5, 99.5, 31))
    e_r, th_r = _moments(sim.image_psf(190, 99.5, 31))  # right of the centre: major axis vertical
    e_t, th_t = _moments(sim.image_psf(99.5, 190, 31))  # above: major axis horizontal
    assert e_c < 0.02 and 0.12 < e_r < 0.3 and e_t == pytest.approx(e_r, abs=0.02)
    assert abs(abs(th_r) - np.pi / 2) < 0.1 and abs(th_t) < 0.1
    assert sim.truth["image_ellipticity"] == (0.0, 0.3) and sim.truth["template_ellipticity"] is None
    assert sim.image_psf(190, 99.5).sum() == pytest.approx(1.0)


def test_round_psfs_unchanged_and_bad_values():
    a = simulate_pair(shape=(64, 64), n_stars=10, seed=2)
    b = simulate_pair(shape=(64, 64), n_stars=10, seed=2, image_ellipticity=None)
    np.testing.assert_array_equal(a.image, b.image)
    with pytest.raises(InputError, match="ellipticity"):
        simulate_pair(shape=(64, 64), n_stars=10, image_ellipticity=(0.1, 0.95))
