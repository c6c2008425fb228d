"""One preset over many pairs: serially, on a local process pool, or on a Dask cluster (no Qt).

Each job loads its pair, runs the preset's method exactly as the window does
(:meth:`diffgui.app.run.Run.execute`), writes the results file and, when asked, the
candidates CSV. Jobs are independent: a failing pair is reported and the others go on.

Dask is optional (``pip install diffgui[dask]``): ``backend='dask'`` starts a
``distributed.LocalCluster`` or connects to ``scheduler='tcp://host:8786'``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from diffgui.engine.errors import Cancelled, InputError

__all__ = ["BatchJob", "BatchResult", "plan_jobs", "read_pair_list", "run_job", "run_batch", "BACKENDS"]

BACKENDS = ("serial", "local", "dask")


@dataclass
class BatchJob:
    """One pair to process.

    Attributes
    ----------
    science, template : str
        Input files (``[N]``/``[EXTNAME]`` suffixes allowed).
    output : str
        Results file (multi-extension FITS).
    candidates : str or None
        Candidates CSV to write, or None.
    """

    science: str
    template: str
    output: str
    candidates: Optional[str] = None


@dataclass
class BatchResult:
    """Outcome of one job: ``status`` is 'done', 'failed' or 'cancelled'."""

    job: BatchJob
    status: str
    error: str = ""
    seconds: float = 0.0
    n_candidates: Optional[int] = None
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _stem(path: str) -> str:
    from .labels import _stem as stem
    from .pair import split_hdu_spec

    return stem(split_hdu_spec(path)[0])


def plan_jobs(pairs: Sequence, out_dir, *, candidates: bool = False, suffix: str = "-diff") -> list:
    """Jobs for ``pairs`` (``(science, template)`` or ``(science, template, output)``)
    with outputs ``<out_dir>/<science stem><suffix>.fits`` (and ``...-candidates.csv``).

    Raises
    ------
    InputError
        Two pairs would write the same output file.
    """
    out_dir = os.fspath(out_dir)
    jobs, seen = [], {}
    for i, p in enumerate(pairs):
        p = list(p)
        if len(p) not in (2, 3):
            raise InputError(f"pair {i + 1} must be (science, template[, output]), got {p!r}")
        sci, tmpl = str(p[0]), str(p[1])
        out = str(p[2]) if len(p) == 3 else os.path.join(out_dir, _stem(sci) + suffix + ".fits")
        if out in seen:
            raise InputError(f"pairs {seen[out] + 1} and {i + 1} would both write {out}: "
                             "their science files have the same name; give output names in the pair list.")
        seen[out] = i
        cand = None
        if candidates:
            base = out[:-5] if out.lower().endswith(".fits") else os.path.splitext(out)[0]
            cand = (base[: -len(suffix)] if suffix and base.endswith(suffix) else base) + "-candidates.csv"
        jobs.append(BatchJob(sci, tmpl, out, cand))
    return jobs


def read_pair_list(path) -> list:
    """Read a pair list: one ``SCIENCE TEMPLATE [OUTPUT]`` per line (spaces or commas;
    ``#`` comments). Relative names are taken relative to the list's folder."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise InputError(f"cannot read the pair list {path}: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    pairs = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [x for x in line.replace(",", " ").split() if x]
        if len(parts) not in (2, 3):
            raise InputError(f"{path} line {n}: expected 'SCIENCE TEMPLATE [OUTPUT]', got {line!r}")
        pairs.append(tuple(p if os.path.isabs(p) else os.path.join(base, p) for p in parts))
    if not pairs:
        raise InputError(f"{path} lists no pairs.")
    return pairs


def run_job(job: BatchJob, method: str, params: dict, *, threshold: float = 5.0, overwrite: bool = False,
            preset_hash: str = "", verbose: Optional[Callable] = None, cancel=None) -> BatchResult:
    """Process one pair (runs in a worker process or thread; never raises for a bad pair)."""
    from .candidates import candidates_for_run, export_csv
    from .pair import load_pair
    from .results_io import save_run
    from .run import Run, describe_error

    t0 = time.perf_counter()
    run = None
    try:
        for path in (job.output, job.candidates):
            if path and os.path.exists(path) and not overwrite:
                raise InputError(f"{path} already exists (use overwrite to replace it)")
        pair = load_pair(job.science, job.template)
        run = Run(method=method, params=dict(params))
        run.execute(pair, verbose=verbose, cancel=cancel)
        os.makedirs(os.path.dirname(os.path.abspath(job.output)), exist_ok=True)
        save_run(run, job.output, header=pair.image_header, overwrite=overwrite)
        n = None
        if job.candidates:
            cset = candidates_for_run(run, pair, threshold=threshold)
            export_csv(job.candidates, cset, preset_hash=preset_hash, overwrite=overwrite)
            n = len(cset)
        return BatchResult(job, "done", "", time.perf_counter() - t0, n, dict(run.timings))
    except Cancelled:
        return BatchResult(job, "cancelled", "cancelled", time.perf_counter() - t0)
    except Exception as exc:  # one bad pair must not stop the batch
        return BatchResult(job, "failed", describe_error(exc), time.perf_counter() - t0,
                           timings=dict(run.timings) if run is not None else {})


def _resolve_workers(workers) -> int:
    if workers and int(workers) > 0:
        return int(workers)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_batch(jobs: Sequence[BatchJob], method: str, params: dict, *, backend: str = "local",
              workers: Optional[int] = None, scheduler: Optional[str] = None, processes: bool = True,
              threshold: float = 5.0, overwrite: bool = False, preset_hash: str = "",
              progress: Optional[Callable[[int, int, BatchResult], None]] = None,
              cancel: Optional[Callable[[], bool]] = None) -> list:
    """Run ``method`` with ``params`` on every job.

    Parameters
    ----------
    jobs : sequence of BatchJob
    method, params :
        What to run (a preset's ``method`` and ``params``).
    backend : {'serial', 'local', 'dask'}
        In this process; a local process pool; a Dask cluster.
    workers : int, optional
        Processes of the local pool or of the Dask LocalCluster (default: usable cores).
    scheduler : str, optional
        Address of a running Dask scheduler; default: start a LocalCluster.
    processes : bool
        Dask LocalCluster with worker processes (True) or threads.
    progress : callable, optional
        ``progress(done, total, result)`` after each job, in completion order.
    cancel : callable, optional
        Polled between jobs; jobs not started yet are reported 'cancelled'.

    Returns
    -------
    list of BatchResult
        In the order of ``jobs``.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown batch backend {backend!r}; use one of {', '.join(BACKENDS)}")
    jobs = list(jobs)
    kw = dict(threshold=threshold, overwrite=overwrite, preset_hash=preset_hash)
    results: list = [None] * len(jobs)
    total = len(jobs)

    def record(i, res):
        results[i] = res
        if progress is not None:
            progress(sum(r is not None for r in results), total, res)

    if backend == "serial" or (backend == "local" and (total <= 1 or _resolve_workers(workers) == 1)):
        for i, job in enumerate(jobs):
            if cancel is not None and cancel():
                record(i, BatchResult(job, "cancelled", "cancelled"))
                continue
            record(i, run_job(job, method, params, cancel=cancel, **kw))
        return results
    if backend == "local":
        _run_local(jobs, method, params, kw, _resolve_workers(workers), record, cancel)
    else:
        _run_dask(jobs, method, params, kw, workers, scheduler, processes, record, cancel)
    for i, job in enumerate(jobs):
        if results[i] is None:
            results[i] = BatchResult(job, "cancelled", "cancelled")
    return results


def _run_local(jobs, method, params, kw, workers, record, cancel):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: the parent may hold FFTW threads or a Qt event loop.
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx)
    try:
        futures = {pool.submit(run_job, job, method, params, **kw): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for f in done:
                i = futures[f]
                try:
                    res = f.result()
                except Exception as exc:  # a worker process died
                    res = BatchResult(jobs[i], "failed", f"worker process failed: {exc}")
                record(i, res)
            if cancel is not None and cancel():
                for f in pending:
                    f.cancel()
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(jobs, method, params, kw, workers, scheduler, processes, record, cancel):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise InputError("the dask backend needs dask and distributed: pip install 'diffgui[dask]'") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        n = _resolve_workers(workers)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(run_job, job, method, params, pure=False, **kw) for job in jobs]
        index = {f.key: i for i, f in enumerate(futures)}
        for f in as_completed(futures):
            i = index[f.key]
            try:
                res = f.result()
            except Exception as exc:
                res = BatchResult(jobs[i], "failed", f"dask worker failed: {exc}")
            record(i, res)
            if cancel is not None and cancel():
                for g in futures:
                    g.cancel()
                break
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
