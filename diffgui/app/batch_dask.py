"""The Dask backend of :func:`diffgui.app.batch.run_batch` (no Qt).

Workers get each job's *paths* (never pickled arrays), read the inputs themselves and
write the results atomically. When a worker dies mid-pair the scheduler hands the task
to another worker; a retried job whose output was already written completely is
reported 'skipped' instead of failing on the existing file.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from diffgui.engine.errors import InputError

__all__ = ["check_scheduler", "run_on_dask", "CONNECT_TIMEOUT"]

#: Seconds to wait for a scheduler before giving up with a clear message.
CONNECT_TIMEOUT = 5.0


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> str:
    """Check that a Dask scheduler listens at ``address`` (``tcp://host:port`` or ``host:port``).

    Raises
    ------
    InputError
        Malformed address, or nothing answers within ``timeout`` seconds.
    """
    addr = address if "://" in address else f"tcp://{address}"
    u = urlparse(addr)
    if u.scheme not in ("tcp", "tls") or not u.hostname or not u.port:
        raise InputError(f"--scheduler must look like tcp://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((u.hostname, u.port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise InputError(f"cannot reach the Dask scheduler at {addr} ({reason} after at most {timeout:g} s); "
                         "is `dask scheduler` running there and the port open?") from None
    return addr


def _connect(workers, scheduler, processes):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("the dask backend needs dask and distributed: pip install 'diffgui[dask]'") from None
    from .batch import _resolve_workers

    if scheduler:
        addr = check_scheduler(scheduler)
        try:
            return Client(addr, timeout=f"{int(CONNECT_TIMEOUT * 2)}s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot connect to the Dask scheduler at {addr}: {exc}") from None
    from .batch import sigint_held

    with sigint_held():  # Ctrl-C must not reach workers that are still starting
        cluster = LocalCluster(n_workers=_resolve_workers(workers), threads_per_worker=1, processes=processes,
                               dashboard_address=None)
        return Client(cluster), cluster


def _host_threads(client) -> dict:
    """Task threads of all workers per host (``{host: n}``), as the scheduler knows them now."""
    out: dict = {}
    try:
        for addr, w in client.scheduler_info().get("workers", {}).items():
            host = urlparse(addr).hostname or w.get("host")
            out[host] = out.get(host, 0) + int(w.get("nthreads") or 1)
    except Exception:  # an old scheduler: each worker then uses its own thread count
        pass
    return out


def task_threads(host_threads: dict) -> int:
    """FFT threads for a task on this Dask worker: the host's usable cores shared by every task
    thread of the workers on that host (workers started by ``dask worker`` do not inherit the
    client's DIFFGUI_THREADS/OPENBLAS limits, so they are set in the task)."""
    from distributed import get_worker

    from .batch import _resolve_workers

    try:
        w = get_worker()
        n = host_threads.get(urlparse(w.address).hostname) or w.state.nthreads
    except Exception:  # not in a worker (tests call the task directly)
        n = 1
    return max(1, _resolve_workers(0) // max(1, int(n)))


def _dask_job(job, method, params, host_threads, **kw):
    """``run_job`` with this worker's share of the cores (``host_threads`` None: the workers are
    threads of the client's process, whose limits stay as they are)."""
    from .batch import run_job

    threads = None if host_threads is None else task_threads(host_threads)
    return run_job(job, method, params, threads=threads, **kw)


def run_on_dask(jobs, todo, method, params, kw, workers, scheduler, processes, record, cancel):
    """Submit ``jobs[i]`` for ``i in todo`` and ``record(i, result)`` as they finish."""
    from distributed import as_completed

    from .batch import BatchResult

    client, cluster = _connect(workers, scheduler, processes)
    futures = []
    try:
        hosts = _host_threads(client) if (scheduler or processes) else None
        futures = [client.submit(_dask_job, jobs[i], method, params, hosts, pure=False, retries=2, **kw)
                   for i in todo]
        index = {f.key: i for f, i in zip(futures, todo)}
        for f in as_completed(futures):
            i = index[f.key]
            try:
                res = f.result()
            except Exception as exc:
                res = BatchResult(jobs[i], "failed", f"dask worker failed: {exc}")
            record(i, res)
            if cancel is not None and cancel():
                break
    finally:
        for g in futures:
            if not g.done():
                g.cancel()
        client.close()
        if cluster is not None:
            cluster.close()
