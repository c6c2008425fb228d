"""The one table of keys: window shortcuts, blink keys and vetting keys.

Everything that shows or handles a key reads :data:`KEYS`: the menu actions take
their shortcuts from it (:func:`shortcut`), Help > Keys and the vetting overlay
are generated from it (:func:`help_html`, :func:`help_rows`), and the vetting
key filter maps key presses through it (:func:`vetting_command`). Vetting keys
carry no modifier, window keys that would collide with them carry one (blink is
Ctrl+B, B is "bogus"), so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from PyQt6 import QtCore, QtGui

__all__ = ["Key", "KEYS", "shortcut", "help_rows", "help_html", "vetting_command", "VETTING_ACTIONS"]


@dataclass(frozen=True)
class Key:
    """One entry of the key table.

    Attributes
    ----------
    action : str
        Identifier (``'run'``, ``'blink'``, ``'real'`` ...).
    keys : tuple of str
        Key sequences in QKeySequence text form; the first one is the menu shortcut.
    context : str
        ``'window'`` (anywhere in the window), ``'blink'`` (blink view shown),
        ``'vetting'`` (Candidates dock shown: whatever widget has focus), ``'mouse'``.
    text : str
        What the key does, as shown in the help.
    """

    action: str
    keys: tuple
    context: str
    text: str

    @property
    def label(self) -> str:
        """The keys as shown to users (``'N / Down'``)."""
        return " / ".join(self.keys)


KEYS: tuple[Key, ...] = (
    Key("run", ("F5",), "window", "run the subtraction"),
    Key("cancel", ("Esc",), "window", "cancel the run (closes the vetting help first)"),
    Key("open", ("Ctrl+O",), "window", "open a pair"),
    Key("demo", ("Ctrl+D",), "window", "open the simulated demo pair"),
    Key("save", ("Ctrl+S",), "window", "save the results (multi-extension FITS)"),
    Key("png", ("Ctrl+P",), "window", "save the panels as PNG"),
    Key("quit", ("Ctrl+Q",), "window", "quit"),
    Key("blink", ("Ctrl+B",), "window", "blink view on/off"),
    Key("zoom_fit", ("Home",), "window", "zoom to fit the whole image"),
    Key("maximise", ("F11",), "window", "maximise the panel under the cursor / restore the grid"),
    Key("find", ("Ctrl+F",), "window", "find candidates again"),
    Key("blink_toggle", ("Space",), "blink", "start/stop blinking"),
    Key("blink_step", ("Left", "Right"), "blink", "previous/next blink frame"),
    Key("real", ("R",), "vetting", "label real: a genuine astrophysical change"),
    Key("bogus", ("B",), "vetting", "label bogus: artefact, bad subtraction, noise"),
    Key("skip", ("S",), "vetting", "skip: undecided, look again later"),
    Key("undo", ("U",), "vetting", "undo the last label"),
    Key("next", ("N",), "vetting", "next candidate (also Down in the table)"),
    Key("previous", ("P",), "vetting", "previous candidate (also Up in the table)"),
    Key("help", ("?", "H"), "vetting", "show or hide the vetting keys"),
    Key("hide-help", ("Esc",), "vetting", "close the vetting help"),
    Key("pan_zoom", ("wheel / drag",), "mouse", "zoom / pan every panel together"),
    Key("maximise_click", ("double-click",), "mouse", "maximise a panel; double-click again to restore"),
    Key("centre", ("click a row",), "mouse", "centre every panel on a candidate (zooms in on it)"),
    Key("sort", ("header click",), "mouse", "sort the candidates by that column"),
)

#: Actions the vetting key filter handles.
VETTING_ACTIONS = tuple(k.action for k in KEYS if k.context == "vetting")

_CONTEXT_TITLES = {"window": "Window", "blink": "Blink view", "vetting": "Candidates (vetting)",
                   "mouse": "Mouse"}


def entry(action: str) -> Key:
    """The table entry of ``action`` (KeyError when there is none)."""
    for k in KEYS:
        if k.action == action:
            return k
    raise KeyError(action)


def shortcut(action: str) -> str:
    """The menu shortcut of ``action`` (its first key)."""
    return entry(action).keys[0]


def help_rows(context: str | None = None) -> list:
    """``[(keys, text), ...]`` of one context (all contexts when None)."""
    return [(k.label, k.text) for k in KEYS if context is None or k.context == context]


def help_html(contexts=("window", "blink", "vetting", "mouse")) -> str:
    """An HTML table of the keys of ``contexts``, one section per context."""
    parts = []
    for ctx in contexts:
        rows = "".join(f"<tr><td align='right' style='padding-right:14px'><b>{keys}</b></td><td>{text}</td></tr>"
                       for keys, text in help_rows(ctx))
        parts.append(f"<tr><td colspan='2'><i>{_CONTEXT_TITLES[ctx]}</i></td></tr>{rows}")
    return f"<table>{''.join(parts)}</table>"


def _qt_key(text: str):
    seq = QtGui.QKeySequence(text)
    if seq.isEmpty():
        return None
    combo = seq[0]
    return combo.key(), combo.keyboardModifiers()


def _vetting_map() -> dict:
    out = {}
    for k in KEYS:
        if k.context != "vetting":
            continue
        for text in k.keys:
            parsed = _qt_key(text)
            if parsed is not None:
                out[parsed[0]] = k.action
    out[QtCore.Qt.Key.Key_F1] = "help"
    return out


_VETTING = _vetting_map()


def vetting_command(event) -> str | None:
    """The vetting action of a key event, or None (keys with Ctrl/Alt/Meta are never vetting keys)."""
    km = QtCore.Qt.KeyboardModifier
    mods = event.modifiers() & ~km.KeypadModifier & ~km.ShiftModifier  # '?' needs Shift
    if mods != km.NoModifier:
        return None
    return _VETTING.get(QtCore.Qt.Key(event.key()))
