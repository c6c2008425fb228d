"""diffgui: astronomical image subtraction engine and desktop application."""

__version__ = "0.1.0"
