"""Window geometry and dock arrangement, coordinate formatting, run summaries for titles.

- :func:`fit_to_screen` opens the window within the screen's available geometry, or
  where it was last closed (QSettings ``window/geometry`` and ``window/state``),
  clamped to the screen it opens on; :func:`save_layout` stores both.
- :func:`arrange_docks` tabs the docks so that the panels get the space: every dock in
  one tabbed column on the left (parameters in front), except the candidates, which
  have the right side to themselves on screens at least :data:`WIDE_SCREEN` wide.
"""

from __future__ import annotations

from PyQt6 import QtCore, QtGui, QtWidgets

__all__ = ["fit_to_screen", "save_layout", "arrange_docks", "format_radec", "sexagesimal", "param_summary",
           "WIDE_SCREEN", "RADEC_FORMATS"]

#: Below this available width (px) every dock shares one tabbed column.
WIDE_SCREEN = 1700
RADEC_FORMATS = ("both", "degrees", "sexagesimal")
_DEFAULT_SIZE = (1500, 900)


def _available(win) -> QtCore.QRect:
    screen = win.screen() or QtGui.QGuiApplication.primaryScreen()
    return screen.availableGeometry() if screen is not None else QtCore.QRect(0, 0, *_DEFAULT_SIZE)


def fit_to_screen(win) -> None:
    """Restore the remembered geometry and dock layout, else a default size; in either
    case the window ends up inside the available geometry of its screen."""
    s = win.settings
    geo, state = s.value("window/geometry"), s.value("window/state")
    if isinstance(geo, (QtCore.QByteArray, bytes)) and geo:
        win.restoreGeometry(QtCore.QByteArray(geo))
    else:
        avail = _available(win)
        if avail.width() < _DEFAULT_SIZE[0] + 40 or avail.height() < _DEFAULT_SIZE[1] + 60:
            # a small screen: all of it (maximised), not a window hanging off its edges
            win.resize(avail.width(), avail.height())
            win.move(avail.topLeft())
            if isinstance(state, (QtCore.QByteArray, bytes)) and state:
                win.restoreState(QtCore.QByteArray(state))
            return
        if avail.width() >= 1800 and avail.height() >= 1000:  # a large screen: most of it
            win.resize(int(avail.width() * 0.92), int(avail.height() * 0.9))
        else:
            win.resize(*_DEFAULT_SIZE)
    if isinstance(state, (QtCore.QByteArray, bytes)) and state:
        win.restoreState(QtCore.QByteArray(state))
    clamp_to_screen(win)


def clamp_to_screen(win) -> None:
    """Shrink and move the window so that all of it (frame included) is on the screen."""
    avail = _available(win)
    # the frame is unknown before the first show: leave room for a typical title bar
    frame_w, frame_h = (0, 0) if win.isVisible() else (8, 34)
    if win.isVisible():
        fg, g = win.frameGeometry(), win.geometry()
        frame_w, frame_h = fg.width() - g.width(), fg.height() - g.height()
    w = min(win.width(), avail.width() - frame_w)
    h = min(win.height(), avail.height() - frame_h)
    if (w, h) != (win.width(), win.height()):
        win.resize(max(w, 200), max(h, 200))
    pos = win.pos()
    x = min(max(pos.x(), avail.left()), avail.right() - win.width() - frame_w + 1)
    y = min(max(pos.y(), avail.top()), avail.bottom() - win.height() - frame_h + 1)
    win.move(max(x, avail.left()), max(y, avail.top()))


def save_layout(win) -> None:
    """Remember the window's geometry and its docks and toolbars (on close)."""
    win.settings.setValue("window/geometry", win.saveGeometry())
    win.settings.setValue("window/state", win.saveState())


def arrange_docks(win) -> None:
    """Tab the docks: all in the left column behind the parameters, except the candidates
    on the right of a wide screen."""
    left = getattr(win, "method_dock", None)
    log = getattr(win, "log_dock", None)
    if left is None:
        return
    if log is not None:
        win.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, log)
        win.tabifyDockWidget(left, log)
    others = [d for d in win.findChildren(QtWidgets.QDockWidget) if d not in (left, log)]
    cand = getattr(win, "vetting_dock", None)
    if cand in others:
        others.remove(cand)
        others.insert(0, cand)
    narrow = _available(win).width() < WIDE_SCREEN
    for d in others:
        if d.isFloating():
            continue
        if d is cand and not narrow:  # the candidates alone on the right of a wide screen
            win.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, d)
            continue
        win.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, d)
        win.tabifyDockWidget(left, d)
    for d in (left, *others[:1]):
        d.raise_()  # parameters and candidates are the tabs in front
    if narrow:
        left.raise_()
    win.resizeDocks([left], [330], QtCore.Qt.Orientation.Horizontal)
    unelide_tabs(win)
    QtCore.QTimer.singleShot(0, lambda: unelide_tabs(win))  # tab bars made by the layout pass
    if not narrow and cand is not None:
        win.resizeDocks([cand], [400], QtCore.Qt.Orientation.Horizontal)


def unelide_tabs(win) -> None:
    """Dock tabs show their whole titles (scroll buttons when they do not fit), never "Sco…"."""
    from PyQt6 import sip

    if sip.isdeleted(win):
        return
    for bar in win.findChildren(QtWidgets.QTabBar):
        bar.setElideMode(QtCore.Qt.TextElideMode.ElideNone)
        bar.setUsesScrollButtons(True)
        bar.setExpanding(False)


def sexagesimal(ra: float, dec: float) -> str:
    """``'09:59:59.76 +01:59:56.0'`` (RA in hours, Dec in degrees)."""
    hh, mm, ss = _base60((ra % 360.0) / 15.0, 59.995)  # seconds shown to 0.01
    sign = "-" if dec < 0 else "+"
    dd, dm, ds = _base60(abs(dec), 59.95)  # to 0.1
    return f"{hh % 24:02d}:{mm:02d}:{ss:05.2f} {sign}{dd:02d}:{dm:02d}:{ds:04.1f}"


def _base60(v: float, round_up: float):
    """``(units, minutes, seconds)`` of ``v >= 0``; seconds that would print as 60 carry over."""
    whole = int(v)
    m = int((v - whole) * 60)
    sec = ((v - whole) * 60 - m) * 60
    if sec >= round_up:
        sec, m = 0.0, m + 1
    if m >= 60:
        m, whole = 0, whole + 1
    return whole, m, sec


def format_radec(ra: float, dec: float, fmt: str = "both") -> str:
    """RA/Dec for the status bar: ``'degrees'``, ``'sexagesimal'`` or ``'both'``."""
    deg = f"RA={ra:.6f} Dec={dec:+.6f}"
    if fmt == "degrees":
        return deg
    sx = sexagesimal(ra, dec)
    if fmt == "sexagesimal":
        r, d = sx.split(" ")
        return f"RA={r} Dec={d}"
    return f"{deg} ({sx})"


def param_summary(method: str, label: str, params: dict, limit: int = 3) -> str:
    """``'ZOGY nx=2, dx=0.1'``: the method and the parameters that differ from its
    defaults (at most ``limit``, then ``+N``); ``'ZOGY defaults'`` when none do."""
    try:
        from diffgui.engine import params as specs

        defaults = specs.defaults(method)
    except Exception:
        defaults = {}
    changed = []
    for k, v in params.items():
        if k in defaults and _same(defaults[k], v):
            continue
        if isinstance(v, (list, tuple, dict)) or v is None or (hasattr(v, "shape")):
            continue
        changed.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    if not changed:
        return f"{label} defaults"
    more = f" +{len(changed) - limit}" if len(changed) > limit else ""
    return f"{label} {', '.join(changed[:limit])}{more}"


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False
