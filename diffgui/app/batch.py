"""One preset over many pairs: serially, on a local process pool, or on a Dask cluster (no Qt).

Each job loads its pair, runs the preset's method exactly as the window does
(:meth:`diffgui.app.run.Run.execute`), writes the results file and, when asked, the
candidates CSV. Jobs are independent: a failing pair is reported and the others go on.

Dask is optional (``pip install diffgui[dask]``): ``backend='dask'`` starts a
``distributed.LocalCluster`` or connects to ``scheduler='tcp://host:8786'``.
"""

from __future__ import annotations

import contextlib
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
    photometry: list = field(default_factory=list)

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
    """Read a pair list: one ``SCIENCE TEMPLATE [OUTPUT]`` per line.

    Fields are separated by spaces or commas; ``#`` starts a comment. Names holding
    spaces or ``#`` are written in quotes (``"night 1/sci #3.fits" tmpl.fits``), or the
    line is TAB-separated (then only TABs separate fields and ``#`` is literal).
    Relative names are taken relative to the list's folder.
    """
    from .batch_report import split_pair_line

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise InputError(f"cannot read the pair list {path}: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    pairs = []
    for n, line in enumerate(lines, 1):
        try:
            parts = split_pair_line(line)
        except InputError as exc:
            raise InputError(f"{path} line {n}: {exc}") from None
        if not parts:
            continue
        if len(parts) not in (2, 3):
            raise InputError(f"{path} line {n}: expected 'SCIENCE TEMPLATE [OUTPUT]', got {line.strip()!r} "
                             "(quote names with spaces or '#', or separate the fields with TABs)")
        pairs.append(tuple(p if os.path.isabs(p) else os.path.join(base, p) for p in parts))
    if not pairs:
        raise InputError(f"{path} lists no pairs.")
    return pairs


def run_job(job: BatchJob, method: str, params: dict, *, threshold: float = 5.0, overwrite: bool = False,
            preset_hash: str = "", verbose: Optional[Callable] = None, cancel=None, align: Optional[str] = None,
            skip_complete: bool = False, photometry: Optional[Sequence] = None,
            threads: Optional[int] = None) -> BatchResult:
    """Process one pair (runs in a worker process or thread; never raises for a bad pair).

    ``align`` (``'shift'``, ``'similarity'`` or ``'affine'``) registers the science image
    onto the template first; ``skip_complete`` reports a complete existing output as
    'skipped' (resume, and a Dask retry after a worker died once the file was written).
    ``photometry``: ``(x, y[, ra, dec])`` positions measured on the written results right
    away (:func:`diffgui.app.lightcurve.measure_positions`; rows in ``result.photometry``).
    ``threads``: FFT threads of this process from now on (BLAS gets one), for Dask workers,
    which do not inherit the client's environment.
    """
    from .batch_report import output_complete
    from .candidates import candidates_for_run, export_csv
    from .pair import load_pair
    from .results_io import save_run
    from .run import Run, describe_error

    t0, c0 = time.perf_counter(), time.process_time()
    if threads:
        _limit_threads(threads)
    run = None
    try:
        if skip_complete and output_complete(job.output, job.candidates):
            return BatchResult(job, "skipped", "", 0.0)
        for path in (job.output, job.candidates):
            if path and os.path.exists(path) and not overwrite:
                raise InputError(f"{path} already exists (use overwrite to replace it)")
        transform = None
        if align:
            from .align import load_aligned_pair

            pair, transform = load_aligned_pair(job.science, job.template, model=align)
        else:
            pair = load_pair(job.science, job.template)
        # a registered pair is aligned by construction (the registration checked its residual and
        # touched it up by cross-correlation): the alignment check would only measure it again
        run = Run(method=method, params=dict(params), check_alignment=transform is None)
        run.execute(pair, verbose=verbose, cancel=cancel, score=False)
        from .scoring import score_run  # light: no science catalogue, the template's cached

        run.quality = score_run(run, pair, light=True)
        if transform is not None:
            run.provenance["registration"] = transform.to_dict()
        from .lightcurve import observation_info

        run.provenance["observation"] = observation_info(pair.image_header)
        os.makedirs(os.path.dirname(os.path.abspath(job.output)), exist_ok=True)
        save_run(run, job.output, header=pair.image_header, overwrite=overwrite)
        n = None
        if job.candidates:
            cset = candidates_for_run(run, pair, threshold=threshold)
            export_csv(job.candidates, cset, preset_hash=preset_hash, overwrite=overwrite)
            n = len(cset)
        rows = []
        if photometry:
            from .lightcurve import measure_positions

            t1, c1 = time.perf_counter(), time.process_time()
            rows = measure_positions(job.output, photometry)
            run.timings.update(photometry=time.perf_counter() - t1, photometry_cpu_s=time.process_time() - c1)
        return BatchResult(job, "done", "", time.perf_counter() - t0, n,
                           {**run.timings, "peak_rss_mb": _peak_rss_mb(), "pid": os.getpid(),
                            "cpu_s": time.process_time() - c0}, rows)
    except Cancelled:
        return BatchResult(job, "cancelled", "cancelled", time.perf_counter() - t0)
    except Exception as exc:  # one bad pair must not stop the batch
        return BatchResult(job, "failed", describe_error(exc), time.perf_counter() - t0,
                           timings=dict(run.timings) if run is not None else {})


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MB; Linux ru_maxrss is in kB)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - not POSIX
        return float("nan")


def _resolve_workers(workers) -> int:
    if workers and int(workers) > 0:
        return int(workers)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during :func:`run_batch`; ``results`` holds every pair's outcome so far
    (pairs not finished are 'cancelled'). The worker processes are gone when it is raised."""

    def __init__(self, results):
        super().__init__("batch interrupted")
        self.results = results


def _precheck(jobs, overwrite, resume):
    """Outcomes decided before dispatch: complete outputs skipped on resume, existing ones refused."""
    from .batch_report import output_complete

    decided = {}
    for i, job in enumerate(jobs):
        if resume and output_complete(job.output, job.candidates):
            decided[i] = BatchResult(job, "skipped", "", 0.0)
        elif not overwrite and any(p and os.path.exists(p) for p in (job.output, job.candidates)):
            which = job.output if os.path.exists(job.output) else job.candidates
            hint = "--resume re-runs it when incomplete" if resume else "use --overwrite or --resume"
            if resume:  # incomplete leftover of an interrupted run: ours to replace
                decided[i] = None
                continue
            decided[i] = BatchResult(job, "failed", f"{which} already exists ({hint})")
    return decided


def run_batch(jobs: Sequence[BatchJob], method: str, params: dict, *, backend: str = "local",
              workers: Optional[int] = None, scheduler: Optional[str] = None, processes: bool = True,
              threshold: float = 5.0, overwrite: bool = False, preset_hash: str = "",
              progress: Optional[Callable[[int, int, BatchResult], None]] = None,
              cancel: Optional[Callable[[], bool]] = None, resume: bool = False,
              align: Optional[str] = None, photometry: Optional[Sequence] = None) -> list:
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
    resume : bool
        Skip pairs whose output exists and is complete (status 'skipped'); incomplete
        leftovers are replaced.
    align : str, optional
        Register each science image onto its template first ('shift', 'similarity', 'affine').
    photometry : sequence of (x, y) or (x, y, ra, dec), optional
        Forced photometry at these positions on each new difference, in the worker that made it
        (``result.photometry``; :func:`diffgui.app.lightcurve.light_curves_from_batch`).

    Returns
    -------
    list of BatchResult
        In the order of ``jobs``.

    Raises
    ------
    BatchInterrupted
        On KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the CLI).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown batch backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if workers is not None and int(workers) < 0:
        raise InputError(f"workers must be 0 (all usable cores) or a positive number, got {workers}")
    jobs = list(jobs)
    results: list = [None] * len(jobs)
    total = len(jobs)

    def record(i, res):
        results[i] = res
        if progress is not None:
            progress(sum(r is not None for r in results), total, res)

    decided = _precheck(jobs, overwrite, resume)
    for i, res in decided.items():
        if res is not None:
            record(i, res)
    todo = [i for i in range(total) if results[i] is None]
    replace = overwrite or resume
    kw = dict(threshold=threshold, overwrite=replace, preset_hash=preset_hash, align=align,
              skip_complete=not overwrite, photometry=[tuple(p) for p in photometry] if photometry else None)
    try:
        if backend == "serial" or (backend == "local" and (len(todo) <= 1 or _resolve_workers(workers) == 1)):
            _run_serial(jobs, todo, method, params, kw, record, cancel)
        elif backend == "local":
            _run_local(jobs, todo, method, params, kw, _resolve_workers(workers), record, cancel)
        else:
            _run_dask(jobs, todo, method, params, kw, workers, scheduler, processes, record, cancel)
    except KeyboardInterrupt:
        _fill_cancelled(jobs, results)
        raise BatchInterrupted(results) from None
    _fill_cancelled(jobs, results)
    return results


def _run_serial(jobs, todo, method, params, kw, record, cancel):
    from diffgui.engine.common.blas import single_thread_blas

    with single_thread_blas():  # as in a pool worker: spinning BLAS threads only cost CPU here
        for i in todo:
            if cancel is not None and cancel():
                record(i, BatchResult(jobs[i], "cancelled", "cancelled"))
                continue
            record(i, run_job(jobs[i], method, params, cancel=cancel, **kw))


def _fill_cancelled(jobs, results):
    for i, job in enumerate(jobs):
        if results[i] is None:
            results[i] = BatchResult(job, "cancelled", "cancelled")


def _limit_threads(threads: int, blas: int = 1) -> None:
    """This process's FFT threads (a pool of N workers on C cores gets C // N each) and BLAS /
    OpenMP threads (``blas``: the methods' dense solves are small; spinning threads only cost CPU)."""
    from diffgui.engine.common.blas import set_blas_threads

    os.environ["DIFFGUI_THREADS"] = str(int(threads))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(int(blas))  # libraries loaded later read these
    set_blas_threads(blas)  # OpenBLAS already loaded


def _worker_init(parent_pid: int, threads: Optional[int] = None) -> None:
    """Pool worker start-up: die with the parent (SIGKILL on its death, Linux; and a watchdog);
    ``threads``: FFT/BLAS threads of this worker."""
    import signal
    import threading

    if threads:
        _limit_threads(threads)

    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def sigint_held():
    """Hold Ctrl-C back while worker processes are started, then deliver it.

    A terminal's Ctrl-C goes to the whole process group: a worker still importing
    Python would die with a traceback. Children inherit the blocked signal (and ignore
    it in :func:`_worker_init`); a Ctrl-C that came meanwhile reaches this process when
    the block ends, as the usual KeyboardInterrupt. No-op outside the main thread.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _kill_pool(pool) -> None:
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        try:
            p.kill()
        except Exception:
            pass
    for p in procs:
        try:
            p.join(timeout=5)
        except Exception:
            pass


def _run_local(jobs, todo, method, params, kw, workers, record, cancel):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: the parent may hold FFTW threads or a Qt event loop.
    ctx = mp.get_context("spawn")
    n = min(workers, len(todo))
    pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init,
                               initargs=(os.getpid(), max(1, _resolve_workers(0) // n)))
    clean = False
    try:
        with sigint_held():  # submit starts the worker processes
            futures = {pool.submit(run_job, jobs[i], method, params, **kw): i for i in todo}
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
        clean = True
    finally:
        if not clean or (cancel is not None and cancel()):
            _kill_pool(pool)
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(jobs, todo, method, params, kw, workers, scheduler, processes, record, cancel):
    from .batch_dask import run_on_dask

    run_on_dask(jobs, todo, method, params, kw, workers, scheduler, processes, record, cancel)
