"""Compatibility name for :mod:`diffgui.engine.api` (``from diffgui.engine.subtraction import run_zogy``)."""
from diffgui.engine.api import run_hotpants, run_sfft, run_zogy  # noqa: F401
