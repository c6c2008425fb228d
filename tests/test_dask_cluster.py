"""Batches on a real dask.distributed cluster (separate scheduler and worker processes).

CI (.ci/run) starts `dask scheduler` and two `dask worker` processes on 127.0.0.1 and exports
DIFFGUI_TEST_SCHEDULER; without it the tests start their own. The worker-death test always
starts its own cluster (workers without a nanny, so a killed worker stays dead)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from astropy.io import fits
from vetting_support import write_pair

from diffgui.app import batch
from diffgui.app.presets import make_preset
from diffgui.engine.simulation import simulate_pair

pytest.importorskip("distributed")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and workers as subprocesses on 127.0.0.1."""

    def __init__(self, n_workers=2, nanny=True):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                        "127.0.0.1", "--port", str(self.port), "--dashboard-address", ":0"],
                                       env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self.workers = []
        for i in range(n_workers):
            cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1",
                   "--name", f"w{i}", "--dashboard-address", ":0"]
            if not nanny:
                cmd.append("--no-nanny")
            w = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.workers.append(w)
            self.procs.append(w)
        self.wait(n_workers)

    def wait(self, n, timeout=90):
        from distributed import Client

        with Client(self.address, timeout="60s") as c:
            c.wait_for_workers(n, timeout=timeout)

    def close(self):
        for p in reversed(self.procs):  # workers hold nothing worth a graceful shutdown
            if p.poll() is None:
                p.kill() if p in self.workers else p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def scheduler():
    addr = os.environ.get("DIFFGUI_TEST_SCHEDULER")
    if addr:
        yield addr
        return
    c = Cluster(2)
    try:
        yield c.address
    finally:
        c.close()


def _pairs(tmp_path, n, size=128):
    sims = [simulate_pair(shape=(size, size), transients=1, seed=20 + i) for i in range(n)]
    return [write_pair(tmp_path, s, names=(f"s{i}.fits", f"t{i}.fits")) for i, s in enumerate(sims)]


def test_batch_on_a_real_cluster_matches_serial_bit_for_bit(tmp_path, scheduler):
    pairs = _pairs(tmp_path, 3)
    params = make_preset("hotpants", {"backend": "native"}).params
    jobs = batch.plan_jobs(pairs, tmp_path / "dask")
    res = batch.run_batch(jobs, "hotpants", params, backend="dask", scheduler=scheduler)
    assert [r.status for r in res] == ["done"] * 3, [r.error for r in res]
    serial = batch.run_batch(batch.plan_jobs(pairs[:1], tmp_path / "serial"), "hotpants", params, backend="serial")
    for ext in ("DIFF", "NOISE", "CONVOLVED"):
        np.testing.assert_array_equal(fits.getdata(res[0].job.output, ext), fits.getdata(serial[0].job.output, ext))


def test_a_worker_dying_mid_batch_gets_its_pair_retried_elsewhere(tmp_path):
    pairs = _pairs(tmp_path, 5)
    params = make_preset("hotpants", {"backend": "native"}).params
    jobs = batch.plan_jobs(pairs, tmp_path / "out")
    cluster = Cluster(2, nanny=False)
    try:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("res", batch.run_batch(
            jobs, "hotpants", params, backend="dask", scheduler=cluster.address)))
        t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(os.path.exists(j.output) for j in jobs):
            time.sleep(0.1)
        cluster.workers[0].send_signal(signal.SIGKILL)  # dies while holding a pair
        t.join(timeout=120)
        assert not t.is_alive()
    finally:
        cluster.close()
    res = box["res"]
    assert all(r.status in ("done", "skipped") for r in res), [(r.status, r.error) for r in res]
    assert all(os.path.exists(j.output) for j in jobs)
