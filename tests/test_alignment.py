"""Alignment check: coarse cross-correlation refined by windowed star centroids, on simulated and real frames."""

import json
import time

import numpy as np
import pytest
from scipy import ndimage

from diffgui.engine.common.alignment import check_alignment, measure_offset
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair
from shared_paths import DATA

PYDIA = DATA / "pydia-bulge-kb13475"


@pytest.fixture(scope="module")
def sim():
    return simulate_pair(shape=(512, 512), transients=0, seed=3)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.5, 0.0), (0.0, 1.0), (0.3, -0.2), (1.25, -2.7), (3.5, -3.5),
                                   (-6.4, 3.1)])
def test_simulated_shift_is_measured(shift):
    pair = simulate_pair(shape=(384, 384), template_shift=shift, transients=0, seed=5, psf="moffat",
                         image_ellipticity=0.25)
    off = measure_offset(pair.image, pair.template)
    # template_shift is template minus science; the offset is science minus template
    assert off.method == "stars" and off.n_stars >= 30
    assert off.dx == pytest.approx(-shift[0], abs=0.02)
    assert off.dy == pytest.approx(-shift[1], abs=0.02)
    assert off.reliable and off.peak > 0.5 and max(off.error) < 0.05
    if np.hypot(*shift) > 0.35:
        with pytest.raises(InputError, match="science is shifted by"):
            check_alignment(pair.image, pair.template)
    elif shift == (0.0, 0.0):
        check_alignment(pair.image, pair.template)


@pytest.mark.parametrize("kw", [
    dict(psf="moffat", moffat_beta=4.0, image_fwhm=4.5, template_fwhm=2.5),  # very different seeing
    dict(image_ellipticity=0.35, template_ellipticity=0.1),                   # elliptical PSFs
    dict(image_ellipticity=(0.1, 0.4), template_fwhm_gradient=0.3),           # PSFs varying over the field
    dict(n_stars=2500, image_fwhm=4.5, template_fwhm=3.0),                    # crowded
])
def test_aligned_pairs_with_different_psfs_pass(kw):
    pair = simulate_pair(shape=(384, 384), transients=0, seed=4, **kw)
    lines = []
    off = check_alignment(pair.image, pair.template, log=lines.append)
    assert off.method == "stars" and off.n_stars >= 30
    assert abs(off.dx) < 0.02 and abs(off.dy) < 0.02 and off.max_displacement < 0.05
    assert "stars" in lines[0]


def test_check_names_the_offset():
    pair = simulate_pair(shape=(384, 384), template_shift=(-3.2, 1.1), transients=0, seed=6)
    expected = r"science is shifted by \(3\.[12]\d, -1\.[01]\d\) px relative to the template"
    with pytest.raises(InputError, match=expected):
        check_alignment(pair.image, pair.template, hint="diffgui run --align")
    aligned = simulate_pair(shape=(384, 384), transients=0, seed=6)
    lines = []
    off = check_alignment(aligned.image, aligned.template, log=lines.append)
    assert off.max_displacement < 0.1 and "alignment" in lines[0]


def test_rotation_is_detected(sim):
    rotated = ndimage.rotate(sim.image, 0.2, reshape=False, order=3, mode="nearest")
    off = measure_offset(rotated, sim.template)
    assert abs(off.rotation) == pytest.approx(0.2, abs=0.005) and off.rotation_error < 0.005
    assert abs(off.scale - 1) < 1e-4
    assert np.hypot(off.dx, off.dy) < 0.03  # rotation about the centre: no shift there
    with pytest.raises(InputError, match="rotated by"):
        check_alignment(rotated, sim.template)
    # 0.03 deg moves the corners by 0.19 px: aligned within 0.3 px
    check_alignment(ndimage.rotate(sim.image, 0.03, reshape=False, order=3, mode="nearest"), sim.template)


def test_too_few_stars_fall_back_to_the_correlation_and_say_so():
    pair = simulate_pair(shape=(256, 256), n_stars=3, transients=0, seed=12, template_shift=(0.2, 0.1))
    lines = []
    off = check_alignment(pair.image, pair.template, log=lines.append)
    assert off.method == "correlation" and off.max_displacement_error >= 0.5
    assert "cross-correlation only" in lines[0]


def test_noise_only_is_not_judged_but_unmatched_fields_are(sim):
    rng = np.random.default_rng(1)
    off = check_alignment(rng.normal(size=(200, 200)), rng.normal(size=(200, 200)))
    assert not off.reliable
    with pytest.raises(InputError, match="do not match"):
        check_alignment(sim.image, np.ascontiguousarray(sim.template[::-1, ::-1]))


def test_fast_on_2048():
    pair = simulate_pair(shape=(2048, 2048), n_stars=1500, transients=0, seed=2)
    measure_offset(pair.image, pair.template)
    t0 = time.process_time()  # CPU time: wall time depends on who else uses the machine
    off = measure_offset(pair.image, pair.template)
    assert time.process_time() - t0 < 0.3
    assert len(off.regions) == 4 and off.max_displacement < 0.05 and off.n_stars > 100


@pytest.mark.parametrize("name", ["0102_vs_0001", "0131_vs_0174"])
def test_real_pydia_pairs_pass(name):
    from diffgui.app.pair import load_pair

    sci = PYDIA / "pairs" / f"{name}_sci.fits"
    if not sci.exists():
        pytest.skip("shared data not found")
    known = {p["pair"]: p for p in json.loads((PYDIA / "pairs" / "pairs.json").read_text())}[name]
    pair = load_pair(str(sci), str(PYDIA / "pairs" / f"{name}_ref.fits"))
    off = check_alignment(pair.image, pair.template, pair.mask, pair.template_mask)
    assert off.method == "stars" and off.n_stars > 50 and off.max_displacement < 0.2
    assert abs(off.dx) == pytest.approx(abs(known["residual_shift"][0]), abs=0.05)
    assert abs(off.dy) == pytest.approx(abs(known["residual_shift"][1]), abs=0.05)


def test_real_pair_0130_agrees_with_its_frames():
    """pairs.json says (0.052, 0.016) for 0130_vs_0178, from frames.json, whose 0178 entry has a
    correlation peak of only 0.275; the frames measured here give the pair's offset independently."""
    from diffgui.app.pair import load_pair, read_fits_image

    sci = PYDIA / "pairs" / "0130_vs_0178_sci.fits"
    if not sci.exists():
        pytest.skip("shared data not found")
    pair = load_pair(str(sci), str(PYDIA / "pairs" / "0130_vs_0178_ref.fits"))
    off = check_alignment(pair.image, pair.template, pair.mask, pair.template_mask)
    ref = read_fits_image(PYDIA / "frames" / "AKB13475I0001.fits.fz").data
    frames = []
    for f in ("0130", "0178"):
        img = read_fits_image(PYDIA / "frames" / f"AKB13475I{f}.fits.fz").data
        frames.append(measure_offset(img, ref, img >= 65000, ref >= 65000))
    dx, dy = frames[0].dx - frames[1].dx, frames[0].dy - frames[1].dy
    # the crops remove whole pixels: only the fractional part is left in the pair
    assert off.dx == pytest.approx(dx - round(dx), abs=0.05)
    assert off.dy == pytest.approx(dy - round(dy), abs=0.05)


def test_real_jwst_pair_passes():
    from diffgui.app.pair import load_pair

    folder = DATA / "jwst-nircam-a2744"
    if not folder.exists():
        pytest.skip("shared data not found")
    pair = load_pair(str(folder / "science.fits"), str(folder / "template.fits"))
    off = check_alignment(pair.image, pair.template, pair.mask, pair.template_mask)
    assert off.method == "stars" and off.n_stars > 20 and off.max_displacement < 0.3


def test_decam_epochs_differ_by_the_same_offset_in_every_frame():
    """The DECam frames of one epoch agree within 0.1 px; the two epochs' grids differ by about
    (0.55, 0.25) px in every frame pair and in the stacks (star centroids, cross-correlation and
    registration.find_transform all measure it), so the stacks are not aligned to 0.3 px."""
    from diffgui.app.pair import load_pair

    folder = DATA / "decam-i-stacks"
    if not folder.exists():
        pytest.skip("shared data not found")

    def offset(a, b):
        pair = load_pair(str(folder / a), str(folder / b))
        return measure_offset(pair.image, pair.template, pair.mask, pair.template_mask)

    for a, b in (("04a", "04b"), ("18a", "18b"), ("18a", "18c")):
        off = offset(f"frames/DEC-OBS{a}.fits", f"frames/DEC-OBS{b}.fits")
        assert off.method == "stars" and np.hypot(off.dx, off.dy) < 0.15
    stacks = offset("Stack-DEC-OBS04.fits", "Stack-DEC-OBS18.fits")
    frames = [offset(f"frames/DEC-OBS04{c}.fits", f"frames/DEC-OBS18{c}.fits") for c in "abcde"]
    assert stacks.method == "stars"
    for off in frames + [stacks]:
        assert 0.3 < off.dx < 0.8 and 0.1 < off.dy < 0.4
    assert stacks.max_displacement - stacks.max_displacement_error > 0.3


# frames whose frames.json shift comes from a good match (pyDIA's own peak > 0.25)
@pytest.mark.parametrize("frame", ["0008", "0020", "0026", "0074", "0135", "0177"])
def test_real_frames_give_known_offsets(frame):
    from diffgui.app.pair import read_fits_image

    path = PYDIA / "frames" / f"AKB13475I{frame}.fits.fz"
    if not path.exists():
        pytest.skip("shared data not found")
    known = {f["f"]: f for f in json.loads((PYDIA / "frames.json").read_text())}[f"AKB13475I{frame}.fits"]
    ref = read_fits_image(PYDIA / "frames" / "AKB13475I0001.fits.fz").data
    img = read_fits_image(path).data
    off = measure_offset(img, ref)
    # frames.json gives the shift that registers a frame onto frame 0001: minus our offset;
    # its own scatter is about 0.1 px (median |difference| 0.08 px per axis over its 69 frames
    # with peak >= 0.3, where star matching by registration.find_transform agrees with ours
    # within 0.02 px)
    assert off.method == "stars" and off.n_stars > 50
    assert off.dx == pytest.approx(-known["dx"], abs=0.2)
    assert off.dy == pytest.approx(-known["dy"], abs=0.2)
    with pytest.raises(InputError, match="science is shifted by"):
        check_alignment(img, ref)


def _image_minus_template(image, template, **kw):
    return image - template


def test_batch_fails_the_misaligned_pair_and_goes_on(tmp_path):
    from astropy.io import fits

    from diffgui.app import batch, methods

    files = []
    for i, shift in enumerate([(0.0, 0.0), (3.0, -1.0)]):
        sim = simulate_pair(shape=(256, 256), template_shift=shift, transients=0, seed=11)
        pair = []
        for part, arr in (("sci", sim.image), ("ref", sim.template)):
            path = tmp_path / f"{i}_{part}.fits"
            fits.PrimaryHDU(arr.astype(np.float32)).writeto(path)
            pair.append(str(path))
        files.append(tuple(pair))
    methods.register(methods.MethodInfo("minus", "Minus", func=_image_minus_template), replace=True)
    try:
        jobs = batch.plan_jobs(files, tmp_path / "out")
        results = batch.run_batch(jobs, "minus", {}, backend="serial")
    finally:
        methods.unregister("minus")
    assert [r.status for r in results] == ["done", "failed"]
    assert "science is shifted by (-" in results[1].error and "register it first" in results[1].error
