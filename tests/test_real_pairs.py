"""Real crowded pair (pyDIA, Galactic bulge): every method puts the microlensing event first.

The pair `0102_vs_0001` has saturated stars at 65300 ADU and the microlensing source
brightening near (253, 219) (data README). Loading masks the saturation plateau; the
gains come from the headers. A method that leaves saturated cores or noise-model
errors at the top of the candidate list fails here.
"""

import numpy as np
import pytest
from astropy.io import fits

from diffgui.app.candidates import candidates_for_run
from diffgui.app.pair import load_pair, saturation_mask
from diffgui.app.run import Run
from shared_paths import DATA

PAIRS = DATA / "pydia-bulge-kb13475" / "pairs"
EVENT = (253.0, 219.0)


@pytest.fixture(scope="module")
def pair():
    sci = PAIRS / "0102_vs_0001_sci.fits"
    if not sci.exists():
        pytest.skip(f"shared data not found at {PAIRS}")
    return load_pair(str(sci), str(PAIRS / "0102_vs_0001_ref.fits"))


def test_saturation_plateau_and_header_level():
    img = np.random.default_rng(0).normal(100, 5, (64, 64))
    assert saturation_mask(img) is None  # no plateau, no keyword
    img[30:33, 30:33] = 65300.0
    m = saturation_mask(img, grow=1)
    assert m[31, 31] and m[29, 31] and not m[27, 31] and m.sum() == 25 - 4
    hdr = fits.Header({"SATURATE": 500.0})
    img2 = np.random.default_rng(1).normal(100, 5, (64, 64))
    img2[10, 10] = 800.0
    m2 = saturation_mask(img2, hdr, grow=0)
    assert m2.sum() == 1 and m2[10, 10]


def test_loading_masks_saturated_stars_and_reads_gains(pair):
    assert pair.mask is not None and pair.mask.sum() >= 67
    assert pair.mask[pair.image >= 65300].all()
    assert pair.header_values({"image_gain": None, "template_gain": None})["image_gain"] == 1.9


@pytest.mark.parametrize("method", ["zogy", "sfft", "hotpants"])
def test_microlensing_event_is_the_first_candidate(pair, method):
    params = {"backend": "native"} if method == "hotpants" else {}
    run = Run(method=method, params=params).execute(pair)
    cands = candidates_for_run(run, pair).table
    assert len(cands) > 0
    top = cands[np.argmax(cands["snr"])]
    assert np.hypot(top["x"] - EVENT[0], top["y"] - EVENT[1]) < 2.0, (top["x"], top["y"])
    assert top["sign"] > 0  # the source brightens


# ---- issue 11: noise-normalised differences of SFFT and HOTPANTS (native) on all three pairs ----
ALL_PAIRS = {"0102_vs_0001": (253.0, 219.0), "0130_vs_0178": (272.0, 216.0), "0131_vs_0174": (273.0, 214.0)}


def _source_free(pair):
    """Unmasked pixels where the template holds no source above 2 sigma (grown by 2 px)."""
    from scipy import ndimage

    from diffgui.engine.common.noise import estimate_background

    bg = estimate_background(pair.template, pair.template_mask)
    sigma = np.sqrt(np.maximum(pair.template, 0) / pair.template_header["GAIN"])
    src = ndimage.binary_dilation(pair.template - bg.back > 2 * sigma, iterations=2)
    return ~(src | pair.mask | pair.template_mask)


def _assert_normalised(scaled, free, label):
    r = scaled[free & (scaled != 0) & np.isfinite(scaled)]
    assert r.size > 20000, label
    med = float(np.median(r))
    std = 1.4826 * float(np.median(np.abs(r - med)))
    assert 0.9 <= std <= 1.2, f"{label}: robust std of difference/noise {std:.3f}"
    assert abs(med) <= 0.1, f"{label}: median of difference/noise {med:.3f}"


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("method", ["sfft", "hotpants"])
def test_engine_with_header_gains_is_noise_normalised(name, method):
    from diffgui.engine.api import run_hotpants, run_sfft

    sci = PAIRS / f"{name}_sci.fits"
    if not sci.exists():
        pytest.skip(f"shared data not found at {PAIRS}")
    pair = load_pair(str(sci), str(PAIRS / f"{name}_ref.fits"))
    hi, ht = pair.image_header, pair.template_header
    kw = dict(err=True, template_err=True, image_gain=hi["GAIN"], template_gain=ht["GAIN"],
              image_readnoise=hi["RDNOISE"], template_readnoise=ht["RDNOISE"], get_scaled=True)
    if method == "hotpants":
        diff, scaled = run_hotpants(pair.image, pair.template, pair.mask, pair.template_mask,
                                    backend="native", **kw)
    else:
        diff, scaled = run_sfft(pair.image, pair.template, pair.mask, pair.template_mask, **kw)
    _assert_normalised(scaled, _source_free(pair), f"{method} on {name}")


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("method", ["sfft", "hotpants"])
def test_diffgui_run_defaults_rank_the_event_first(tmp_path, name, method):
    import csv

    from diffgui import cli

    sci = PAIRS / f"{name}_sci.fits"
    if not sci.exists():
        pytest.skip(f"shared data not found at {PAIRS}")
    out, cand = tmp_path / "out.fits", tmp_path / "c.csv"
    assert cli.main(["run", "--method", method, str(sci), str(PAIRS / f"{name}_ref.fits"), "-o", str(out),
                     "--candidates", str(cand), "-q"]) == 0
    with open(cand) as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    ex, ey = ALL_PAIRS[name]
    assert rows and np.hypot(float(rows[0]["x"]) - ex, float(rows[0]["y"]) - ey) < 3.0, rows[0]
    pair = load_pair(str(sci), str(PAIRS / f"{name}_ref.fits"))
    with fits.open(out) as h:
        assert h[0].header["DGGAIN"] == 1.9 and h[0].header["DGTGAIN"] == 1.9 and h[0].header["DGRDN"] == 5.0
        _assert_normalised(h["SCALED"].data.astype(float), _source_free(pair), f"diffgui run {method} {name}")


# ---- issue 11: ZOGY's S_corr centred and unit-normal on the three pairs ----------------------
#: S_corr over source-free pixels (engine, header gains), measured 2026-12-04: with the
#: kernel-sum flux scale 0102 -0.04 / 1.10, 0130 +0.14 / 1.04, 0131 -0.02 / 1.18; with
#: the kernel's wings and variable sources left out of its fit (F_r 1.5238, 1.3863,
#: 1.3392) -0.08 / 1.10, +0.06 / 1.05, +0.00 / 1.19. The median follows the flux-scale
#: error (0.6 % of F_r moves it by about 0.1). Pairs still open: none.
_ZOGY_NORM_OPEN = {}


def _zogy_pairs(open_work=None):
    open_work = open_work or {}
    return [pytest.param(n, marks=pytest.mark.xfail(reason=open_work[n], strict=False))
            if n in open_work else n for n in ALL_PAIRS]


_ZOGY_ENGINE = {}


def _zogy_engine(name):
    """``(pair, S_corr)`` of run_zogy with err=True and the header gains (cached per pair)."""
    from diffgui.engine.api import run_zogy

    sci = PAIRS / f"{name}_sci.fits"
    if not sci.exists():
        pytest.skip(f"shared data not found at {PAIRS}")
    if name not in _ZOGY_ENGINE:
        pair = load_pair(str(sci), str(PAIRS / f"{name}_ref.fits"))
        hi, ht = pair.image_header, pair.template_header
        D, S = run_zogy(pair.image, pair.template, pair.mask, pair.template_mask, err=True,
                        template_err=True, image_gain=hi["GAIN"], template_gain=ht["GAIN"],
                        image_readnoise=hi["RDNOISE"], template_readnoise=ht["RDNOISE"])
        _ZOGY_ENGINE.clear()  # one pair in memory at a time
        _ZOGY_ENGINE[name] = (pair, S)
    return _ZOGY_ENGINE[name]


@pytest.mark.parametrize("name", _zogy_pairs())
def test_zogy_engine_event_is_the_strongest_peak(name):
    pair, S = _zogy_engine(name)
    ex, ey = ALL_PAIRS[name]
    yy, xx = np.mgrid[:S.shape[0], :S.shape[1]]
    near = np.hypot(xx - ex, yy - ey) < 4
    # Stars cut by the frame edge leave S_corr of 15-20 in the outermost rows (the
    # candidate finder skips them too); cosmic rays are masked by run_zogy.
    inner = np.zeros(S.shape, bool)
    inner[10:-10, 10:-10] = True
    assert S[near].max() > np.abs(S[~near & inner]).max(), "the event is not the strongest S_corr peak"


@pytest.mark.parametrize("name", _zogy_pairs(_ZOGY_NORM_OPEN))
def test_zogy_engine_scorr_is_normalised(name):
    pair, S = _zogy_engine(name)
    _assert_normalised(S, _source_free(pair), f"ZOGY S_corr on {name}")


@pytest.mark.parametrize("name", _zogy_pairs())
def test_zogy_diffgui_run_defaults_rank_the_event_first(tmp_path, name):
    import csv

    from diffgui import cli

    sci = PAIRS / f"{name}_sci.fits"
    if not sci.exists():
        pytest.skip(f"shared data not found at {PAIRS}")
    out, cand = tmp_path / "out.fits", tmp_path / "c.csv"
    assert cli.main(["run", "--method", "zogy", str(sci), str(PAIRS / f"{name}_ref.fits"), "-o",
                     str(out), "--candidates", str(cand), "-q"]) == 0
    with open(cand) as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    ex, ey = ALL_PAIRS[name]
    assert rows and np.hypot(float(rows[0]["x"]) - ex, float(rows[0]["y"]) - ey) < 3.0, rows[0]
    # (S_corr's centring and width: test_zogy_engine_scorr_is_normalised; through
    # diffgui run the source-free median and width equal the engine's.)
