"""Object detection: completeness and astrometry on simulated stars, flags, edge cases."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from diffgui.engine.common.detection import (FLAG_EDGE, FLAG_MASKED, FLAG_SATURATED, detect_objects)
from diffgui.engine.errors import InputError
from diffgui.engine.common.noise import build_noise_map
from diffgui.engine.simulation import simulate_pair


@pytest.fixture(scope="module")
def pair():
    return simulate_pair(shape=(512, 512), n_stars=300, transients=0, image_fwhm=3.0,
                         seed=11)


def test_finds_bright_stars_with_accurate_positions(pair):
    err = build_noise_map(pair.image, gain=pair.truth["image_gain"])
    obj = detect_objects(pair.image, err=err)
    stars = pair.stars
    # S/N of each star in the science image alone (PSF-optimal, sky + source noise).
    bright = stars[_image_snr(pair) > 20]
    assert len(bright) > 50
    tree = cKDTree(np.c_[obj["x"], obj["y"]])
    d, i = tree.query(np.c_[bright["x"], bright["y"]])
    found = d < 1.0
    assert found.mean() >= 0.95, found.mean()
    # Isolated bright stars (no neighbour within 8 px) are measured to 0.1 px.
    all_tree = cKDTree(np.c_[stars["x"], stars["y"]])
    nn = all_tree.query(np.c_[bright["x"], bright["y"]], k=2)[0][:, 1]
    iso = found & (nn > 8)
    assert np.percentile(d[iso], 90) < 0.1, np.percentile(d[iso], 90)
    # FWHM of isolated bright stars close to the truth (pixel-integrated PSF).
    fwhm = np.median(obj["fwhm"][i[iso]])
    assert fwhm == pytest.approx(3.0, rel=0.1)
    # Sorted brightest first, all columns present, 0-based coordinates.
    assert np.all(np.diff(obj["flux"]) <= 0)
    for c in ("x", "y", "flux", "fluxerr", "mag", "magerr", "fwhm", "a", "b", "theta", "flags"):
        assert c in obj.colnames


def _image_snr(pair):
    s = pair.stars
    out = []
    sky_var = pair.image_noise ** 2
    for x, y, f in zip(s["x"], s["y"], s["image_flux"]):
        p = pair.image_psf(x, y)
        h = p.shape[0] // 2
        ix, iy = int(round(x)), int(round(y))
        v = sky_var[max(iy - h, 0):iy + h + 1, max(ix - h, 0):ix + h + 1]
        if v.shape != p.shape:
            out.append(0.0)
            continue
        out.append(f * np.sqrt(np.sum(p ** 2 / v)))
    return np.array(out)


def test_flags_saturation_edge_and_mask():
    p = simulate_pair(shape=(256, 256), n_stars=60, star_flux_range=(3e4, 1e6), saturation=20000,
                      transients=0, seed=5)
    mask = np.zeros(p.image.shape, bool)
    mask[100:140, 100:140] = True
    obj = detect_objects(p.image, mask=mask, saturation=20000, edge=20)
    assert np.any(obj["flags"] & FLAG_SATURATED)
    sat_truth = p.stars[p.stars["saturated"]]
    if len(sat_truth):
        d, i = cKDTree(np.c_[obj["x"], obj["y"]]).query(np.c_[sat_truth["x"], sat_truth["y"]])
        hit = d < 2
        assert np.all(obj["flags"][i[hit]] & FLAG_SATURATED)
    near_edge = (obj["x"] < 20) | (obj["y"] < 20) | (obj["x"] > 235) | (obj["y"] > 235)
    assert np.all(obj["flags"][near_edge] & FLAG_EDGE)
    inside = (obj["x"] > 98) & (obj["x"] < 142) & (obj["y"] > 98) & (obj["y"] < 142)
    assert np.all(obj["flags"][inside] & FLAG_MASKED)


def test_empty_field_gives_empty_table_and_bad_input_errors():
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 1, (128, 128))
    obj = detect_objects(noise, thresh=10)
    assert len(obj) == 0 and "x" in obj.colnames
    with pytest.raises(InputError, match="masked"):
        detect_objects(noise, mask=np.ones_like(noise, bool))
    with pytest.raises(InputError, match="threshold"):
        detect_objects(noise, thresh=-1)
    with pytest.raises(InputError, match="2-D"):
        detect_objects(np.zeros((2, 8, 8)))


def test_big_endian_integer_input():
    p = simulate_pair(shape=(192, 192), n_stars=30, star_flux_range=(5e3, 5e4), transients=0, seed=9)
    a = p.image.astype(">i4")
    obj = detect_objects(a)
    obj2 = detect_objects(p.image.astype(np.int32))
    assert len(obj) == len(obj2) > 10


def test_pixel_stack_grows_for_crowded_frames():
    import sep
    p = simulate_pair(shape=(256, 256), n_stars=200, transients=0, seed=4)
    ref = detect_objects(p.image)
    old = sep.get_extract_pixstack()
    try:
        sep.set_extract_pixstack(50)
        obj = detect_objects(p.image)
        assert len(obj) == len(ref) and sep.get_extract_pixstack() > 50
    finally:
        sep.set_extract_pixstack(old)


def test_analyse_image_matches_the_separate_steps(pair):
    from diffgui.engine.common.image_analysis import analyse_image
    from diffgui.engine.common.noise import estimate_background
    res = analyse_image(pair.image, gain=2.0)
    bg = estimate_background(pair.image)
    assert np.array_equal(res.background.back, bg.back)
    assert np.array_equal(res.noise, build_noise_map(pair.image, gain=2.0, background=bg))
    ref = detect_objects(pair.image, gain=2.0, background=bg)
    assert len(res.objects) == len(ref) and np.allclose(res.objects["x"], ref["x"])
