"""Rows and columns of widgets: the box layouts the docks build, in one call each.

An item is a widget, a layout, or ``(widget or layout, stretch)``.
"""

from __future__ import annotations

from PyQt6 import QtWidgets


def _fill(box, items):
    for item in items:
        stretch = 0
        if isinstance(item, tuple):
            item, stretch = item
        if isinstance(item, QtWidgets.QLayout):
            box.addLayout(item, stretch)
        else:
            box.addWidget(item, stretch)
    return box


def row(*items, parent=None) -> QtWidgets.QHBoxLayout:
    """A horizontal box of ``items`` (set on ``parent`` when given)."""
    return _fill(QtWidgets.QHBoxLayout(parent) if parent is not None else QtWidgets.QHBoxLayout(), items)


def column(*items, parent=None) -> QtWidgets.QVBoxLayout:
    """A vertical box of ``items`` (set on ``parent`` when given)."""
    return _fill(QtWidgets.QVBoxLayout(parent) if parent is not None else QtWidgets.QVBoxLayout(), items)
