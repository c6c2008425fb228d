"""Issue 12, items 4 and 5: memory guard, preset size/depth limits, gain and FWHM checks."""

import time
import tracemalloc

import numpy as np
import pytest
from astropy.io import fits

from diffgui import cli
from diffgui.app import presets
from diffgui.engine import run_hotpants, run_sfft, run_zogy
from diffgui.engine.common import resources as R
from diffgui.engine.errors import FitError, InputError
from diffgui.engine.simulation import simulate_pair

RUNS = {
    "zogy": run_zogy,
    "sfft": run_sfft,
    "hotpants": lambda *a, **k: run_hotpants(*a, backend="native", **k),
}


@pytest.fixture(scope="module")
def small():
    return simulate_pair(shape=(64, 64), n_stars=15, seed=5)


# ---- item 5: gains and FWHMs ----------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(RUNS))
@pytest.mark.parametrize("name,value", [("image_gain", -1.0), ("image_gain", 0), ("template_gain", np.nan),
                                        ("template_gain", -5.0), ("image_gain", "2.0")])
def test_bad_gain_is_an_input_error_naming_it(small, method, name, value):
    with pytest.raises(InputError, match=name):
        RUNS[method](small.image, small.template, **{name: value})


@pytest.mark.parametrize("method", ["zogy", "hotpants"])
@pytest.mark.parametrize("name,value", [("image_fwhm", np.nan), ("template_fwhm", -2.0),
                                        ("image_fwhm", np.inf)])
def test_bad_fwhm_is_an_input_error_naming_it(small, method, name, value):
    with pytest.raises(InputError, match=name):
        RUNS[method](small.image, small.template, **{name: value})


def test_gain_none_means_unknown(small):
    d = run_sfft(small.image, small.template, image_gain=None, template_gain=None)
    assert np.isfinite(d).mean() > 0.9


def test_preset_gains_must_be_positive():
    text = ("[diffgui]\nkind='preset'\nschema=1\n[preset]\nmethod='zogy'\n[params]\n"
            "image_gain=-1.0\ntemplate_gain=nan\n")
    with pytest.raises(InputError) as err:
        presets.read_preset_text(text)
    assert "image_gain" in str(err.value) and "template_gain" in str(err.value)


# ---- item 4: memory guard -------------------------------------------------------------------

def test_huge_sfft_kernel_is_refused_at_once(monkeypatch):
    monkeypatch.setattr(R, "available_memory", lambda: 16 * 2**30)
    monkeypatch.delenv(R.ENV_VAR, raising=False)
    img = np.random.default_rng(1).normal(100, 5, (494, 480))
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        run_sfft(img, img.copy(), kernel_shape=(51, 51), kernel_poly_order=5)
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert "GB" in msg and "12.0 GB" in msg and "memory_limit" in msg   # estimate and 75 % of 16 GB


def test_limit_from_argument_env_and_default(monkeypatch):
    monkeypatch.setattr(R, "available_memory", lambda: 8 * 2**30)
    monkeypatch.delenv(R.ENV_VAR, raising=False)
    assert R.resolve_memory_limit() == pytest.approx(6 * 2**30)
    assert R.resolve_memory_limit("50%") == pytest.approx(4 * 2**30)
    assert R.resolve_memory_limit("512M") == 512 * 2**20
    assert R.resolve_memory_limit("off") == float("inf")
    monkeypatch.setenv(R.ENV_VAR, "2GB")
    assert R.resolve_memory_limit() == 2 * 2**30
    assert R.resolve_memory_limit(3e9) == 3e9          # the argument beats the variable
    for bad in ("lots", "-1G", "150%", True):
        with pytest.raises(InputError, match="memory"):
            R.resolve_memory_limit(bad)


@pytest.mark.parametrize("method", sorted(RUNS))
def test_every_method_checks_memory(small, method, monkeypatch):
    monkeypatch.setenv(R.ENV_VAR, "1M")
    with pytest.raises(InputError, match="above the limit of 1.0 MB"):
        RUNS[method](small.image, small.template)
    monkeypatch.setenv(R.ENV_VAR, "off")
    with pytest.raises(InputError, match="above the limit of 2.0 MB"):
        RUNS[method](small.image, small.template, memory_limit="2M")      # the keyword wins
    try:
        RUNS[method](small.image, small.template, memory_limit=2**30)
    except FitError:
        pass              # past the guard; 64x64 holds too few PSF stars for ZOGY


def test_estimate_grows_with_kernel_and_is_an_upper_bound():
    p = simulate_pair(shape=(96, 96), n_stars=20, seed=2)
    small_k = R.estimate_memory("sfft", (96, 96), kernel_shape=(5, 5), kernel_poly_order=1)
    big_k = R.estimate_memory("sfft", (96, 96), kernel_shape=(11, 11), kernel_poly_order=2)
    assert big_k > small_k
    tracemalloc.start()
    try:
        run_sfft(p.image, p.template, kernel_shape=(11, 11), kernel_poly_order=2, max_iter=2,
                 get_noise=True, err=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < big_k < 10 * peak + R._BASE


def test_cli_memory_limit_refuses_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(R.ENV_VAR, "")          # restored after the test (the option sets it)
    img = np.random.default_rng(1).normal(100, 5, (494, 480)).astype(np.float32)
    for name in ("sci.fits", "ref.fits"):
        fits.writeto(tmp_path / name, img)
    t0 = time.perf_counter()
    rc = cli.main(["run", "--method", "sfft", "--set", "kernel_shape=51,51", "--set", "kernel_poly_order=5",
                   "--memory-limit", "8G", str(tmp_path / "sci.fits"), str(tmp_path / "ref.fits"),
                   "-o", str(tmp_path / "out.fits")])
    err = capsys.readouterr().err
    assert rc == 2 and "8.0 GB" in err and "memory" in err
    assert time.perf_counter() - t0 < 5.0
    assert not (tmp_path / "out.fits").exists()


def test_cli_memory_limit_bad_value_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(R.ENV_VAR, "")
    with pytest.raises(SystemExit) as ex:
        cli.main(["run", "--method", "sfft", "--memory-limit", "plenty", "a.fits", "b.fits", "-o",
                  str(tmp_path / "o.fits")])
    assert ex.value.code == 2 and "memory-limit" in capsys.readouterr().err


# ---- item 4: presets are refused early ------------------------------------------------------

_HEAD = "[diffgui]\nkind='preset'\nschema=1\n[preset]\nmethod='sfft'\n[params]\n"


def test_huge_preset_list_is_refused_at_once(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text(_HEAD + "kernel_shape=[" + ",".join(["7"] * 2_000_000) + "]\n")
    t0 = time.perf_counter()
    with pytest.raises(presets.PresetError, match="not a diffgui preset"):
        presets.load_preset(path)
    with pytest.raises(presets.PresetError, match="1000"):
        presets.read_preset_text(_HEAD + "kernel_shape=[" + ",".join(["7"] * 20_000) + "]\n")
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("depth", [20, 5000])
def test_deeply_nested_preset_is_a_preset_error(depth):
    text = _HEAD + "ridge=" + "[" * depth + "]" * depth + "\n"
    with pytest.raises(presets.PresetError, match="nested"):
        presets.read_preset_text(text)
