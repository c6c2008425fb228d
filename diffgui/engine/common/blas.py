"""Limit OpenBLAS to one thread around small dense solves.

On a loaded 2-core machine OpenBLAS's spinning worker threads made a 300x300
Cholesky solve tens of times slower; the methods' normal-equation matrices are
small enough for one thread. Found through ctypes in the libraries already
loaded; a no-op where OpenBLAS cannot be found.
"""

from __future__ import annotations

__all__ = ["single_thread_blas", "set_blas_threads"]


class single_thread_blas:
    """Run small dense linear algebra with one OpenBLAS thread.

    On a loaded 2-core machine OpenBLAS's spinning threads make a 300x300
    solve 50x slower; the fit's matrices are small enough for one thread.
    Falls back to doing nothing when OpenBLAS cannot be found.
    """

    _funcs = None

    @classmethod
    def _find(cls):
        if cls._funcs is not None:
            return cls._funcs
        import ctypes

        funcs = []
        try:
            with open("/proc/self/maps") as fh:
                libs = {line.split()[-1] for line in fh
                        if "openblas" in line.lower() and "/" in line}
        except OSError:
            libs = set()
        for path in sorted(p for p in libs if ".so" in p or p.endswith(".dylib")):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for stem in ("scipy_openblas_", "openblas_", ""):
                for suffix in ("64_", ""):
                    get = getattr(lib, f"{stem}get_num_threads{suffix}", None)
                    put = getattr(lib, f"{stem}set_num_threads{suffix}", None)
                    if get is not None and put is not None:
                        get.restype = ctypes.c_int
                        funcs.append((get, put))
                        break
                else:
                    continue
                break
        cls._funcs = funcs
        return funcs

    def __enter__(self):
        self._saved = []
        for get, put in self._find():
            try:
                n = get()
                put(1)
                self._saved.append((put, n))
            except Exception:  # pragma: no cover - exotic builds
                pass
        return self

    def __exit__(self, *exc):
        for put, n in self._saved:
            put(int(n))
        return False


def set_blas_threads(n: int) -> None:
    """Set every loaded OpenBLAS to ``n`` threads for good (a batch worker's share).

    Looks for the libraries again: scipy may have loaded its own OpenBLAS since
    :class:`single_thread_blas` last looked.
    """
    single_thread_blas._funcs = None
    for _, put in single_thread_blas._find():
        try:
            put(int(n))
        except Exception:  # pragma: no cover - exotic builds
            pass
