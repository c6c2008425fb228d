"""Region sampling of ``diffgui tune`` (diffgui.app.tuning_regions): regions, restricted stars, ZOGY tiles."""

import numpy as np
import pytest

from diffgui.app import scoring, tuning_regions as tr
from diffgui.app.pair import Pair
from diffgui.app.run import Run
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair


def test_regions_sample_corners_and_centre():
    regs = tr.sample_regions((1024, 1024))
    assert len(regs) == 5 and all(x1 - x0 == 256 == y1 - y0 for x0, y0, x1, y1 in regs)
    corners = {(x0, y0) for x0, y0, _, _ in regs}
    assert {(0, 0), (768, 0), (0, 768), (768, 768), (384, 384)} == corners  # far apart
    grid = tr.sample_regions((600, 900), 9)
    assert len(grid) == 9 and max(r[2] for r in grid) == 900 and max(r[3] for r in grid) == 600
    assert tr.sample_regions((4096, 4096))[0][2] == tr.MAX_SIDE
    with pytest.raises(InputError, match="5 .* or 9"):
        tr.sample_regions((1024, 1024), 4)
    with pytest.raises(InputError, match="too small"):
        tr.sample_regions((100, 100), 5, side=64)


@pytest.fixture(scope="module")
def sim():
    return simulate_pair(shape=(320, 320), n_stars=700, image_fwhm=3.0, template_fwhm=2.2,
                         image_fwhm_gradient=(0.5, 0.0), image_gain=2.0, template_gain=10.0,
                         star_flux_range=(2e3, 2e5), seed=5)


@pytest.fixture(scope="module")
def pair(sim):
    return Pair(image=sim.image, template=sim.template, name="sim")


def test_sample_restricts_fit_and_score_stars_to_the_regions(pair):
    stars = scoring.stars_for(pair)
    s = tr.make_sample(stars, pair.image.shape, 5, side=100)
    assert s is not None and s.mask.mean() == pytest.approx(5 * 100 * 100 / 320 ** 2)
    for tab, xk, yk in ((s.stars.fit, "x", "y"), (s.stars.score, "px", "py")):
        x, y = np.asarray(tab[xk]).astype(int), np.asarray(tab[yk]).astype(int)
        assert len(tab) and s.mask[y, x].all()
    assert len(s.stars.score) < len(stars.score) and not (s.stars.source_free & ~s.mask).any()
    assert tr.make_sample(stars, pair.image.shape, 0) is None  # whole frame asked for
    few = tr.make_sample(stars.__class__(**{**stars.__dict__, "score": stars.score[:3]}), pair.image.shape,
                         side=100)
    assert few is None  # too few stars to score in the regions: the whole frame is used


def test_zogy_tiles_reproduce_the_full_frame_tiles(pair):
    """The tiles that touch the regions, run as crops with the full-frame PSF model at each
    tile centre, give the full-frame run's S_corr there."""
    from diffgui.app.preview import _PSF_ITEMS, CapturingRun

    params = {"nx": 2, "ny": 2, "image_gain": 2.0, "template_gain": 10.0,
              "psf_options": {"order": 1, "flux_scale": "fit"}}
    captured = {}
    run = CapturingRun(method="zogy", params=params, capture=captured)
    run.check_alignment = False
    run.execute(pair, score=False)
    cached = {k: captured[k] for k in _PSF_ITEMS}
    regions = [(0, 0, 64, 64)]  # touches the first tile only
    out = tr.run_zogy_tiles(pair, params, cached, regions)
    got = np.isfinite(out["scorr"])
    assert got[:160, :160].all() and not got[160:, :].any() and not got[:, 160:].any()
    inner = (slice(40, 120), slice(40, 120))  # away from the frame's edges
    a, b = out["scorr"][inner], run.results["scorr"][inner]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999  # measured 0.9999
    assert np.median(np.abs(a - b)) < 0.03 * np.std(b)  # measured 0.006 of std 0.74
    assert tr.run_zogy_tiles(pair, {**params, "nx": 1, "ny": 1}, cached, regions) is None
