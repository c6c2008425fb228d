"""Child processes and temporary folders that do not outlive their owner.

Pipelines stop jobs with SIGTERM (Slurm, ``timeout``) and sometimes SIGKILL.
Three pieces keep that from leaking work:

* :func:`die_with_parent` (Linux): asks the kernel to SIGKILL the calling
  process when its parent dies, whatever the way (``prctl(PR_SET_PDEATHSIG)``).
  :func:`child_preexec` does it in a ``subprocess.Popen`` child between fork
  and exec, so an external program (HOTPANTS) dies even after a ``kill -9`` of
  diffgui.
* :func:`make_temp_dir` names temporary folders ``<prefix><host>-<pid>-<random>``
  so that the owning process can be identified later.
* :func:`clean_stale_dirs` removes the folders of that naming whose owner is no
  longer running (same host, PID gone): what a ``kill -9`` left behind is
  removed by the next run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile

__all__ = ["die_with_parent", "child_preexec", "make_temp_dir", "clean_stale_dirs", "pid_alive"]

_PR_SET_PDEATHSIG = 1
_LIBC = None
if sys.platform.startswith("linux"):
    try:  # loaded here, not in the forked child (no imports between fork and exec)
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        _LIBC = None


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux only).

    Parameters
    ----------
    sig : int
        Signal to receive (SIGKILL by default).
    parent_pid : int, optional
        The expected parent: when it already died before the request took effect
        (``os.getppid()`` differs), the signal is sent at once.

    Returns
    -------
    bool
        True when the request was accepted (False on other systems).
    """
    if _LIBC is None:
        return False
    if _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
    return True


def child_preexec(parent_pid: int | None = None):
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child dies with this process.

    Use with ``start_new_session=True`` so that the whole group can also be killed.
    Returns None where the kernel has no parent-death signal.
    """
    if _LIBC is None:
        return None
    parent = os.getpid() if parent_pid is None else parent_pid

    def preexec():
        die_with_parent(signal.SIGKILL, parent)

    return preexec


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists, another user's
        return True
    return True


def make_temp_dir(prefix: str, dir=None) -> str:
    """``tempfile.mkdtemp`` whose name records this host and process (see :func:`clean_stale_dirs`)."""
    return tempfile.mkdtemp(prefix=f"{prefix}{_host_tag()}-{os.getpid()}-", dir=dir)


def clean_stale_dirs(prefix: str, dir=None) -> list:
    """Remove folders made by :func:`make_temp_dir` with ``prefix`` whose process has died.

    Parameters
    ----------
    prefix : str
        The prefix given to :func:`make_temp_dir` (e.g. ``"diffgui_hotpants_"``).
    dir : str, optional
        Where to look (default: the system temporary folder).

    Returns
    -------
    list of str
        The folders removed. Folders of live processes, of other hosts, of other
        users (not removable) and of other naming are left alone.
    """
    folder = tempfile.gettempdir() if dir is None else os.fspath(dir)
    pattern = re.compile(re.escape(prefix) + r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-")
    removed, me = [], _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or m["host"] != me or pid_alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid():
                shutil.rmtree(entry.path)
                removed.append(entry.path)
        except OSError:
            pass
    return removed
