"""HOTPANTS native backend: its noise at star peaks matches the real HOTPANTS run of
``hotpants-runs/varying-psf-1024`` (same inputs, noise maps, masks and options)."""

import json

import numpy as np
import pytest

from shared_paths import DATA

FOLDER = DATA / "hotpants-runs" / "varying-psf-1024"
# options the wrapper sets itself (files, masks, header keywords, verbosity)
_OWN = {"allm", "hki", "inim", "tmplim", "outim", "oni", "oci", "oki", "omi", "savexy", "imi", "tmi",
        "ini", "tni", "v"}


def _peak_ratios(diff, noise, bad, stars):
    ix, iy = np.rint(stars["x"]).astype(int), np.rint(stars["y"]).astype(int)
    ok = (noise[iy, ix] > 0) & ~bad[iy, ix]
    return np.abs(diff[iy, ix][ok] / noise[iy, ix][ok])


@pytest.mark.slow
def test_native_noise_at_bright_star_peaks_matches_hotpants():
    from astropy.io import fits

    from diffgui.app.pair import load_pair
    from diffgui.engine.api import run_hotpants
    from diffgui.engine.hotpants.command_line import parse_command
    from diffgui.engine.simulation import simulate_pair

    if not (FOLDER / "command.txt").exists():
        pytest.skip("shared data not found")
    truth = json.loads((FOLDER / "input" / "truth.json").read_text())
    sim = simulate_pair(**{k: tuple(v) if isinstance(v, list) else v for k, v in truth["arguments"].items()})
    s = sim.stars
    bright = (~s["saturated"] & ~s["template_saturated"] & ~s["variable"] & (s["transient"] < 0)
              & (s["image_flux"] > 2e4) & (s["x"] > 20) & (s["x"] < 1004) & (s["y"] > 20) & (s["y"] < 1004))
    stars = s[bright]
    out = FOLDER / "output"
    ref = _peak_ratios(fits.getdata(out / "diff.fits").astype(float), fits.getdata(out / "noise.fits").astype(float),
                       fits.getdata(out / "mask.fits") != 0, stars)
    # our selection reproduces the published figures of the real HOTPANTS run
    assert np.median(ref) == pytest.approx(truth["hotpants_c"]["star_median_abs_snr_at_peak"], abs=0.03)

    _, opts = parse_command((FOLDER / "command.txt").read_text())
    extra = {k: v for k, v in opts.items() if k not in _OWN}
    f = lambda name: str(FOLDER / "input" / name)  # noqa: E731
    pair = load_pair(f("science.fits"), f("template.fits"), mask=f("science_mask.fits"),
                     template_mask=f("template_mask.fits"), err=f("science_err.fits"),
                     template_err=f("template_err.fits"), mask_saturated=False)
    diff, noise = run_hotpants(pair.image, pair.template, pair.mask, pair.template_mask, err=pair.err,
                               template_err=pair.template_err, extra=extra, backend="native", get_noise=True,
                               image_gain=1.6, template_gain=3.0)
    ours = _peak_ratios(diff, noise, ~(noise > 0), stars)
    assert len(ours) > 280
    assert np.median(ours) == pytest.approx(0.64, rel=0.2)
    assert np.percentile(ours, 95) == pytest.approx(2.03, rel=0.2)
