"""Child processes of a frozen (PyInstaller) diffgui.

Runs and candidate searches go to child processes (:mod:`diffgui.app.isolated`).
multiprocessing starts its helper processes by running the current
executable with interpreter options:

* the fork server and the resource tracker: ``<exe> -B -S -I -c "from
  multiprocessing.forkserver import main; main(...)"``;
* a spawned child: ``<exe> --multiprocessing-fork tracker_fd=5 pipe_handle=7``
  (when ``sys.frozen`` is set).

Unfrozen, ``<exe>`` is Python and understands them. Frozen, ``<exe>`` is the
diffgui application, whose own command line parser would refuse them
("unrecognized arguments: -B -S -I -c"). :func:`run_child_command`, called
first thing by :func:`diffgui.cli.main`, recognises exactly these two forms,
runs the child's code and exits; any other command line is left to the parser.
"""

from __future__ import annotations

import re
import sys

__all__ = ["is_child_command", "run_child_command"]

#: The only code a ``-c`` child command may run: multiprocessing's own entry points.
_CODE = re.compile(r"^from multiprocessing\.(forkserver|resource_tracker|semaphore_tracker|popen_forkserver)"
                   r" import main\s*;\s*main\(")
_FLAG = re.compile(r"^-[A-Za-z]+$|^-[WX]\S*$")


def is_child_command(argv) -> str:
    """``'exec'`` or ``'spawn'`` when ``argv`` (a full ``sys.argv``) is a multiprocessing
    helper's command line, else ``''``."""
    args = list(argv[1:])
    if len(args) >= 2 and args[-2] == "-c" and _CODE.match(args[-1]):
        flags = args[:-2]
        i = 0
        while i < len(flags):  # -W and -X take a value, possibly as the next item
            if flags[i] in ("-W", "-X"):
                i += 2
                continue
            if not _FLAG.match(flags[i]):
                return ""
            i += 1
        return "exec"
    if args and args[0] == "--multiprocessing-fork":
        return "spawn"
    return ""


def run_child_command(argv) -> None:
    """Run the multiprocessing helper ``argv`` asks for and exit; return at once if it
    is an ordinary diffgui command line."""
    kind = is_child_command(argv)
    if kind == "exec":
        code = argv[-1]
        namespace = {"__name__": "__mp_child__"}
        exec(compile(code, "<multiprocessing child>", "exec"), namespace)  # noqa: S102 (pattern-checked)
        sys.exit(0)
    if kind == "spawn":
        from multiprocessing import spawn

        kwds = {}
        for item in argv[2:]:
            name, _, value = item.partition("=")
            kwds[name] = None if value == "None" else int(value)
        spawn.spawn_main(**kwds)
        sys.exit(0)
