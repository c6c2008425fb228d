"""Helpers shared by the main-window tests (panels, keys and layout, scorecard, progress).

They drive the window the way a user does: choose a method in the method panel, start a
run and wait for ``runFinished``.
"""

from __future__ import annotations


def choose_method(win, method):
    """List the available methods in the method panel and select ``method``."""
    win.method_panel.populate()
    win.method_panel.set_method(method)


def run_method(qtbot, win, method, timeout=20000):
    """Run ``method`` on the window's current pair; returns the finished run."""
    choose_method(win, method)
    with qtbot.waitSignal(win.runFinished, timeout=timeout) as blocker:
        assert win.start_run()
    return blocker.args[0]


def run_small_pair(qtbot, win, arrays, method="fake", timeout=10000):
    """Load the small test pair (``small_pair_arrays``) and run ``method`` on it; returns ``win``."""
    from diffgui.app.pair import Pair

    win.set_pair(Pair(*arrays, name="small"))
    run_method(qtbot, win, method, timeout)
    return win
