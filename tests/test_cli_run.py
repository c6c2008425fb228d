"""``diffgui run`` and ``diffgui batch``: presets, --set, outputs, progress on stderr, exit codes."""

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from vetting_support import NO_METHOD, available_methods, standin_sfft, write_pair

from diffgui import cli
from diffgui.app import presets
from diffgui.app.pair import load_pair
from diffgui.app.run import Run
from diffgui.engine.simulation import simulate_pair


@pytest.fixture(scope="module")
def sim():
    return simulate_pair(shape=(160, 160), transients=4, transient_snr_range=(20, 60), seed=7)


@pytest.fixture
def pair_files(tmp_path, sim):
    return write_pair(tmp_path, sim)


def test_save_preset_from_options_without_running(tmp_path, capsys):
    out = tmp_path / "p.toml"
    rc = cli.main(["run", "--method", "zogy", "--set", "nx=2", "--set", "dx=0.1", "--set", "image_gain=none",
                   "--save-preset", str(out)])
    assert rc == 0
    p = presets.load_preset(out)
    assert (p.method, p.params["nx"], p.params["dx"], p.params["image_gain"]) == ("zogy", 2, 0.1, None)
    assert p.hash in capsys.readouterr().err


def test_set_overrides_a_preset_and_bad_values_are_named(tmp_path, capsys):
    base = presets.save_preset(tmp_path / "base.toml", "hotpants", {"rel_r": 2.0})
    rc = cli.main(["run", "--preset", base.path, "--set", "extra.ko=1", "--save-preset", str(tmp_path / "new.toml")])
    assert rc == 0
    new = presets.load_preset(tmp_path / "new.toml")
    assert new.params["rel_r"] == 2.0 and new.params["extra"]["ko"] == 1
    rc = cli.main(["run", "--method", "sfft", "--set", "ridge=abc", "--set", "kernel_shape=8,8", "--set", "bogus=1",
                   "--save-preset", str(tmp_path / "x.toml")])
    err = capsys.readouterr().err
    assert rc == 2 and "ridge" in err and "bogus: unknown parameter" in err
    assert not (tmp_path / "x.toml").exists()
    rc = cli.main(["run", "--preset", base.path, "--method", "zogy", "a.fits", "b.fits", "-o", "o.fits"])
    assert rc == 2 and "contradicts the preset" in capsys.readouterr().err


def test_malformed_preset_and_missing_arguments_exit_2(tmp_path, capsys, pair_files):
    bad = tmp_path / "bad.toml"
    bad.write_text("[diffgui]\nschema = 1\n[preset]\nmethod = 'sfft'\n[params]\nridge = -1\nnx = 2\n")
    rc = cli.main(["run", "--preset", str(bad), *pair_files, "-o", str(tmp_path / "o.fits")])
    err = capsys.readouterr().err
    assert rc == 2 and "ridge" in err and "nx: unknown parameter" in err
    rc = cli.main(["run", "--method", "sfft", pair_files[0], "-o", str(tmp_path / "o.fits")])
    assert rc == 2 and "both the science image and the template" in capsys.readouterr().err
    rc = cli.main(["run", "--method", "sfft", *pair_files])
    assert rc == 2 and "-o OUT.fits" in capsys.readouterr().err
    rc = cli.main(["run", *pair_files, "-o", "x.fits"])
    assert rc == 2 and "--preset FILE or --method NAME" in capsys.readouterr().err


def test_unavailable_method_is_reported(tmp_path, capsys, pair_files):
    from diffgui.app import methods

    missing = [m for m in ("zogy", "sfft", "hotpants") if not methods.get(m).available]
    if not missing:
        pytest.skip("every method is available")
    rc = cli.main(["run", "--method", missing[0], *pair_files, "-o", str(tmp_path / "o.fits")])
    assert rc == 2 and "cannot run here" in capsys.readouterr().err


def test_run_with_preset_writes_results_candidates_and_regions(tmp_path, capsys, pair_files, sim):
    out, cand, reg = tmp_path / "out.fits", tmp_path / "c.csv", tmp_path / "c.reg"
    with standin_sfft():
        p = presets.save_preset(tmp_path / "p.toml", "sfft", {"kernel_shape": [5, 5]})
        rc = cli.main(["run", "--preset", p.path, *pair_files, "-o", str(out), "--candidates", str(cand),
                       "--regions", str(reg)])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert "stand-in: matching the template" in err and "results written to" in err  # progress on stderr
        # the same run in this process, as the window does it: identical to the file
        run = Run("sfft", p.params).execute(load_pair(*pair_files))
    with fits.open(out) as h:
        np.testing.assert_array_equal(h["DIFF"].data, run.results["diff"].astype(np.float32))
        assert h[0].header["DGMETHOD"] == "sfft"
    t = Table.read(cand, format="ascii.csv")
    assert len(t) >= 4 and set(t["preset_hash"]) == {p.hash}
    assert np.isfinite(t["ra"]).all()
    tr = sim.transients
    for x, y in zip(tr["x"], tr["y"]):
        assert np.min(np.hypot(t["x"] - x, t["y"] - y)) < 1.5
    assert open(reg).read().count("circle(") == len(t)
    # never overwritten silently
    rc = cli.main(["run", "--preset", p.path, *pair_files, "-o", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_batch_subcommand_with_one_template(tmp_path, capsys, pair_files):
    with standin_sfft():
        rc = cli.main(["batch", "--method", "sfft", "--template", pair_files[1], pair_files[0],
                       str(tmp_path / "nope.fits"),
                       "-o", str(tmp_path / "out"), "--candidates", "--backend", "serial"])
    err = capsys.readouterr().err
    assert rc == 1 and "[1/2] sci.fits: done" in err and "nope.fits: failed" in err and "1 done, 1 failed" in err
    assert (tmp_path / "out" / "sci-diff.fits").exists() and (tmp_path / "out" / "sci-candidates.csv").exists()


@pytest.mark.parametrize("method", available_methods()[:1] or
                         NO_METHOD)
def test_real_method_in_a_separate_process_matches_this_one(tmp_path, pair_files, method):
    """``diffgui run`` as a pipeline runs it (a new process) against the window's code path here."""
    p = presets.save_preset(tmp_path / "p.toml", method, {})
    out = tmp_path / "out.fits"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "diffgui", "run", "--preset", p.path, *pair_files, "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run = Run(method, p.params).execute(load_pair(*pair_files))
    np.testing.assert_array_equal(fits.getdata(out, "DIFF"), run.results["diff"].astype(np.float32))
