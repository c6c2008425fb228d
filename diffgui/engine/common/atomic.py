"""Writing files atomically, with the permissions a plain ``open()`` would give.

Every file diffgui writes (results, labels, presets, candidate lists, regions,
PSFEx files) goes through :func:`atomic_write` (the app uses it through
:mod:`diffgui.app.atomic`): the content is written to a hidden temporary
file in the target folder, then renamed over the target, so that a reader (or
a crash) never sees half a file.

Two details matter for files shared with colleagues and for crashes:

* Permissions. ``tempfile.mkstemp`` creates 0600 files whatever the umask; the
  temporary file here is created with mode 0666 and the kernel applies the
  umask, exactly as ``open(path, "w")`` does. Replacing an existing file keeps
  that file's permission bits (as rewriting it in place would).
* Leftovers. A ``kill -9`` between creating and renaming leaves the temporary
  file behind. Its name, ``.tmp-diffgui-<host>-<pid>-<random><ext>``, records
  which process made it, and the next write into the same folder removes the
  ones whose process is gone (same host, PID not running). Files of other
  programs, and of live processes, are never touched.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time

from diffgui.engine.common.process import _host_tag as host_tag
from diffgui.engine.common.process import pid_alive
from diffgui.engine.errors import InputError

__all__ = ["atomic_write", "clean_stale_temporaries", "TMP_PREFIX", "host_tag", "pid_alive"]

TMP_PREFIX = ".tmp-diffgui-"
_TMP_RE = re.compile(r"^\.tmp-diffgui-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}")
# the naming of diffgui before 0.1 (tempfile.mkstemp(prefix=".tmp-")): no PID, removed after a day
_OLD_RE = re.compile(r"^\.tmp-[a-z0-9_]{8}(\.[A-Za-z0-9]{1,8})?$")
_OLD_AGE = 86400.0


def clean_stale_temporaries(folder) -> list:
    """Remove temporary files of our own naming in ``folder`` whose writer has died.

    Returns
    -------
    list of str
        The paths removed.
    """
    folder = os.fspath(folder)
    removed, me = [], host_tag()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _TMP_RE.match(name)
        if m is None:
            try:
                if not (_OLD_RE.match(name) and now - os.lstat(os.path.join(folder, name)).st_mtime > _OLD_AGE):
                    continue
            except OSError:
                continue
        elif m["host"] != me or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        path = os.path.join(folder, name)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.remove(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def _create_temporary(folder: str, suffix: str) -> str:
    """Create an empty temporary file (mode 0666 minus the umask) and return its path."""
    for _ in range(100):
        name = f"{TMP_PREFIX}{host_tag()}-{os.getpid()}-{secrets.token_hex(6)}{suffix}"
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file", folder)


def atomic_write(path, write, *, overwrite: bool = False) -> str:
    """Write ``path`` through ``write(tmp_path)`` then rename; refuse to clobber unless asked.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    write : callable
        ``write(tmp_path)`` writes the whole content to ``tmp_path`` (which exists, empty).
    overwrite : bool
        Replace an existing ``path`` (its permission bits are kept).

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.
    InputError
        When the folder of ``path`` does not exist.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"folder {folder} does not exist.")
    clean_stale_temporaries(folder)
    tmp = _create_temporary(folder, os.path.splitext(path)[1])
    try:
        write(tmp)
        try:
            old_mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            old_mode = None
        if old_mode is not None:
            os.chmod(tmp, old_mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return path
