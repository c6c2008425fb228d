"""Batch runs: job planning, pair lists, serial, local process pool and Dask backends."""

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from vetting_support import standin_sfft, write_pair

from diffgui.app import batch
from diffgui.app.presets import make_preset
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair


@pytest.fixture(scope="module")
def sims():
    return [simulate_pair(shape=(128, 128), transients=3, transient_snr_range=(30, 60), seed=s) for s in (1, 2)]


@pytest.fixture
def pairs(tmp_path, sims):
    out = []
    for i, sim in enumerate(sims):
        d = tmp_path / f"night{i}"
        d.mkdir()
        out.append(tuple(write_pair(d, sim, names=(f"sci{i}.fits", f"tmpl{i}.fits"))))
    return out


def test_plan_jobs_names_outputs_and_refuses_collisions(tmp_path):
    jobs = batch.plan_jobs([("a/f1.fits", "t.fits"), ("b/f2.fits.fz[1]", "t.fits", "x/out.fits")], tmp_path,
                           candidates=True)
    assert jobs[0].output == str(tmp_path / "f1-diff.fits")
    assert jobs[0].candidates == str(tmp_path / "f1-candidates.csv")
    assert jobs[1].output == "x/out.fits" and jobs[1].candidates == "x/out-candidates.csv"
    with pytest.raises(InputError, match="both write"):
        batch.plan_jobs([("a/f.fits", "t.fits"), ("b/f.fits", "t.fits")], tmp_path)
    with pytest.raises(InputError, match="pair 1 must be"):
        batch.plan_jobs([("only.fits",)], tmp_path)


def test_pair_list_file(tmp_path):
    lst = tmp_path / "pairs.txt"
    lst.write_text("# science template\nsci1.fits tmpl.fits\n\n/abs/sci2.fits, tmpl.fits, out2.fits  # third\n")
    pairs = batch.read_pair_list(lst)
    assert pairs == [(str(tmp_path / "sci1.fits"), str(tmp_path / "tmpl.fits")),
                     ("/abs/sci2.fits", str(tmp_path / "tmpl.fits"), str(tmp_path / "out2.fits"))]
    lst.write_text("a.fits\n")
    with pytest.raises(InputError, match="line 1"):
        batch.read_pair_list(lst)
    with pytest.raises(InputError, match="cannot read"):
        batch.read_pair_list(tmp_path / "none.txt")


def test_serial_batch_writes_results_and_candidates_and_survives_a_bad_pair(tmp_path, pairs):
    bad = tmp_path / "broken.fits"
    bad.write_text("not fits")
    with standin_sfft():
        preset = make_preset("sfft", {"kernel_shape": [5, 5]})
        jobs = batch.plan_jobs(list(pairs) + [(str(bad), pairs[0][1])], tmp_path / "out", candidates=True)
        seen = []
        res = batch.run_batch(jobs, preset.method, preset.params, backend="serial", preset_hash=preset.hash,
                              progress=lambda done, total, r: seen.append((done, total, r.status)))
    assert [r.status for r in res] == ["done", "done", "failed"]
    assert "not a FITS file" in res[2].error
    assert seen == [(1, 3, "done"), (2, 3, "done"), (3, 3, "failed")]
    for r in res[:2]:
        with fits.open(r.job.output) as h:
            assert h["DIFF"].data.shape == (128, 128) and h[0].header["DGMETHOD"] == "sfft"
        cand = Table.read(r.job.candidates, format="ascii.csv")
        assert r.n_candidates == len(cand) >= 3
        assert set(cand["preset_hash"]) == {preset.hash}
    # existing outputs are not overwritten unless asked
    again = batch.run_batch(jobs[:1], "sfft", preset.params, backend="serial")
    assert again[0].status == "failed" and "already exists" in again[0].error


def test_local_process_pool_runs_jobs_in_other_processes(tmp_path):
    # Worker processes import diffgui afresh; missing inputs fail fast in each of them.
    jobs = batch.plan_jobs([(str(tmp_path / f"s{i}.fits"), str(tmp_path / "t.fits")) for i in range(3)], tmp_path)
    res = batch.run_batch(jobs, "sfft", {}, backend="local", workers=2)
    assert [r.job for r in res] == jobs
    assert all(r.status == "failed" and "file not found" in r.error and f"s{i}.fits" in r.error
               for i, r in enumerate(res))


def test_dask_cluster_backend(tmp_path, pairs):
    pytest.importorskip("distributed")
    with standin_sfft():  # threads of an in-process cluster see the stand-in
        jobs = batch.plan_jobs(pairs, tmp_path / "out", candidates=True)
        res = batch.run_batch(jobs, "sfft", make_preset("sfft", {}).params, backend="dask", workers=2,
                              processes=False)
        serial = batch.run_job(batch.BatchJob(pairs[0][0], pairs[0][1], str(tmp_path / "serial.fits")),
                               "sfft", make_preset("sfft", {}).params)
    assert [r.status for r in res] == ["done", "done"], [r.error for r in res]
    a = fits.getdata(res[0].job.output, "DIFF")
    b = fits.getdata(serial.job.output, "DIFF")
    np.testing.assert_array_equal(a, b)


def test_unknown_backend():
    with pytest.raises(InputError, match="unknown batch backend"):
        batch.run_batch([], "sfft", {}, backend="slurm")


def _rows(tables):
    # exact values, NaN equal to NaN
    return [[tuple(float(v).hex() if isinstance(v, (float, np.floating)) else str(v) for v in row) for row in t]
            for t in tables]


def test_photometry_in_the_workers_is_the_light_curve_of_the_files_bit_for_bit(tmp_path, pairs, sims):
    # a real method in a local process pool (native HOTPANTS needs no executable); the light curve measured by each worker right after its subtraction (pool) must be the one
    # `diffgui lightcurve` measures on the written files, and the serial run's, bit for bit
    from diffgui.app import lightcurve

    x, y = float(sims[0].transients["x"][0]), float(sims[0].transients["y"][0])
    where = [(x, y), (40.0, 50.0)]
    params = make_preset("hotpants", {"backend": "native"}).params
    out = {}
    for backend in ("serial", "local"):
        res = batch.run_batch(batch.plan_jobs(pairs, tmp_path / backend), "hotpants", params, backend=backend,
                              workers=2, photometry=where)
        assert [r.status for r in res] == ["done", "done"], [r.error for r in res]
        assert all(len(r.photometry) == 2 and r.timings["cpu_s"] > 0 for r in res)
        out[backend] = (res, lightcurve.light_curves_from_batch(res, where))
    (ser, lc_ser), (pool, lc_pool) = out["serial"], out["local"]
    assert {r.timings["pid"] for r in pool}.isdisjoint({os.getpid()})
    from_files = lightcurve.light_curves([r.job.output for r in pool], where)
    for a, b in zip(lc_pool, from_files):
        assert a.colnames == b.colnames and _rows([a]) == _rows([b])
    strip = [[row[:-1] for row in t] for t in _rows(lc_ser)]  # the 'file' column names other folders
    assert strip == [[row[:-1] for row in t] for t in _rows(lc_pool)]
    for a, b in zip(ser, pool):
        np.testing.assert_array_equal(fits.getdata(a.job.output, "DIFF"), fits.getdata(b.job.output, "DIFF"))
    assert abs(lc_pool[0]["flux"][0]) > 5 * lc_pool[0]["flux_err"][0]  # the transient is there


def test_dask_tasks_take_their_share_of_the_host_cores(monkeypatch):
    pytest.importorskip("distributed")
    from diffgui.app import batch_dask

    monkeypatch.setattr(batch, "_resolve_workers", lambda w: 8 if not w else int(w))
    assert batch_dask.task_threads({}) == 8  # outside a worker: the whole host
    import distributed

    class W:
        address = "tcp://10.0.0.5:40000"

        class state:
            nthreads = 1

    monkeypatch.setattr(distributed, "get_worker", lambda: W)
    assert batch_dask.task_threads({"10.0.0.5": 4}) == 2
    assert batch_dask.task_threads({"other": 4}) == 8  # unknown host: this worker's own threads
    assert batch_dask.task_threads({"10.0.0.5": 16}) == 1
