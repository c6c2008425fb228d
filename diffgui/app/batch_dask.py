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


def run_on_dask(jobs, todo, method, params, kw, workers, scheduler, processes, record, cancel):
    """Submit ``jobs[i]`` for ``i in todo`` and ``record(i, result)`` as they finish."""
    from distributed import as_completed

    from .batch import BatchResult, run_job

    client, cluster = _connect(workers, scheduler, processes)
    futures = []
    try:
        futures = [client.submit(run_job, jobs[i], method, params, pure=False, retries=2, **kw) for i in todo]
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
