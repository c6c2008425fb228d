"""Atomic file writing for the application, and checks of output paths before a run.

The writing itself is :func:`diffgui.engine.common.atomic.atomic_write` (one
implementation for the engine and the application): temporary file in the
target folder created with the permissions ``open()`` would give (umask), then
renamed; stale temporaries of dead diffgui processes are removed on the next
write. :func:`check_output` refuses an output before any work is spent on it.
"""

from __future__ import annotations

import os

from diffgui.engine.common.atomic import TMP_PREFIX, atomic_write, clean_stale_temporaries, host_tag, pid_alive

__all__ = ["atomic_write", "write_text_atomic", "clean_stale_temporaries", "check_output", "TMP_PREFIX",
           "host_tag", "pid_alive"]


def write_text_atomic(path, text: str, *, overwrite: bool = True) -> str:
    """Write ``text`` (UTF-8) to ``path`` via a synced temporary file and a rename."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write, overwrite=overwrite)


def _file_part(path: str) -> str:
    """``sci.fits[1]`` -> ``sci.fits`` (the HDU selector of an input name)."""
    if path.endswith("]") and "[" in path and not os.path.exists(path):
        return path[:path.rindex("[")]
    return path


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path, *, inputs=(), overwrite: bool = False, need_bytes: int = 0) -> None:
    """Refuse an output ``path`` before any work is done, with a message that says why.

    Parameters
    ----------
    path : str or os.PathLike
        The file to be written.
    inputs : sequence of str
        Input files (an HDU selector such as ``[1]`` is ignored): writing over one of
        them is refused even with ``overwrite``.
    overwrite : bool
        Whether an existing ``path`` may be replaced.
    need_bytes : int
        Free space needed in the folder (0: not checked).

    Raises
    ------
    InputError
        The folder is missing, not writable or too full; ``path`` is an input, a folder,
        or exists without ``overwrite``.
    """
    from diffgui.engine.errors import InputError

    path = os.fspath(path)
    for inp in inputs:
        if inp and _same_file(path, _file_part(os.fspath(inp))):
            raise InputError(f"{path} is the same file as {inp}; choose another output name "
                             "(an input is never overwritten, even with --overwrite).")
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder; give a file name.")
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path} already exists; use --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"the output folder {folder} does not exist; create it first.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"the output folder {folder} is not writable.")
    if need_bytes:
        import shutil

        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise InputError(f"the output folder {folder} has {free / 2**20:.1f} MB free; "
                             f"the results need about {need_bytes / 2**20:.1f} MB.")
