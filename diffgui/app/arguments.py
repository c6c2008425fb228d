"""The one place where a method's arguments are built from a preset and a pair (no Qt).

The window's worker (:func:`diffgui.app.isolated.execute_isolated`), ``diffgui run`` and
``diffgui batch`` all execute a :class:`~diffgui.app.run.Run`, and
:meth:`~diffgui.app.run.Run.execute` calls :func:`method_arguments` here: so the same
preset on the same pair gives the same engine call, bit for bit, whichever way it runs.

What is filled in:

- the gains (``GAIN``/``EGAIN``) and read noise (``RDNOISE``/``READNOIS``/``RON``, electrons)
  of each image from its FITS header, for every such parameter of the method that the
  preset leaves unset (None), or at stdpipe's placeholder ``template_gain=1000`` of
  HOTPANTS ("a nearly noiseless template"), which a real header gain replaces;
- ``err=True`` / ``template_err=True`` (a noise map built from the gain) when the preset
  leaves them unset and that image's gain is known: without them SFFT's noise is one
  constant and every candidate's S/N is wrong in a crowded field. A noise map loaded
  with the pair always wins over ``True``.

The values used are returned for the run's provenance and the results header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from diffgui.engine import params as _specs
from diffgui.engine.errors import InputError

__all__ = ["GAIN_KEYS", "READNOISE_KEYS", "NOISE_PARAMS", "Arguments", "header_number", "header_noise",
           "method_arguments"]

#: Header keywords of the gain (e-/ADU), in order of preference.
GAIN_KEYS = ("GAIN", "EGAIN")
#: Header keywords of the read noise (electrons), in order of preference.
READNOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE")
#: Method parameters that describe the noise of each image: ``{name: (image, keys)}``.
NOISE_PARAMS = {
    "image_gain": ("image", GAIN_KEYS),
    "template_gain": ("template", GAIN_KEYS),
    "image_readnoise": ("image", READNOISE_KEYS),
    "template_readnoise": ("template", READNOISE_KEYS),
}
#: Pair inputs a parameter may name as a FITS file (``[HDU]``/``[EXTNAME]`` allowed).
MAP_PARAMS = ("err", "template_err", "mask", "template_mask")
#: Parameter values that stand for "unknown" although they are numbers.
PLACEHOLDERS = {("hotpants", "template_gain"): 1000}
#: Noise-map parameter of each gain.
_MAPS = {"image_gain": "err", "template_gain": "template_err"}


@dataclass
class Arguments:
    """A method's parameter values ready for the engine, and where they came from.

    Attributes
    ----------
    params : dict
        The preset's values with the header values filled in.
    from_headers : dict
        ``{name: value}`` taken from the FITS headers.
    noise : dict
        Gains and read noise the run uses (None: unknown), for the results header.
    maps : dict
        Noise maps and masks the parameters name as files (``err='noise.fits[ERR]'``),
        read: ``{name: array}``; they replace the pair's own maps for this run.
    map_files : dict
        ``{name: file}`` of those maps, for the provenance.
    """

    params: dict
    from_headers: dict = field(default_factory=dict)
    noise: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)
    map_files: dict = field(default_factory=dict)


def header_number(header, keys, *, positive: bool = True):
    """The first finite number among ``keys`` of a FITS header (None when none).

    Parameters
    ----------
    header : astropy.io.fits.Header, dict or None
    keys : sequence of str
    positive : bool
        Accept only values > 0 (else >= 0).
    """
    if header is None:
        return None
    for key in keys:
        try:
            value = float(header[key])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        if np.isfinite(value) and (value > 0 if positive else value >= 0):
            return value
    return None


def header_noise(image_header, template_header) -> dict:
    """Gains and read noise of both images from their headers (None where absent)."""
    headers = {"image": image_header, "template": template_header}
    return {name: header_number(headers[which], keys, positive=name.endswith("gain"))
            for name, (which, keys) in NOISE_PARAMS.items()}


def _method_defaults(method: str) -> dict:
    """The method's parameter defaults, or {} for a method without specs (test doubles)."""
    try:
        return _specs.defaults(method)
    except InputError:
        return {}


def _read_maps(params: dict, shape) -> tuple[dict, dict]:
    """Read the noise maps and masks that parameters give as file names."""
    from .pair import _optional_image

    maps, files = {}, {}
    for key in MAP_PARAMS:
        value = params.get(key)
        if isinstance(value, (str, os.PathLike)) and str(value).strip():
            if shape is None:
                raise InputError(f"{key} is given as a file ({value}) but the pair's shape is unknown")
            files[key] = os.fspath(value)
            maps[key] = _optional_image(files[key], key.replace("_", " "), shape)
    return maps, files


def method_arguments(method: str, params: dict, image_header=None, template_header=None,
                     shape=None) -> Arguments:
    """Fill a preset's unset noise parameters from the FITS headers.

    Parameters
    ----------
    method : str
        Method name (``'zogy'``, ``'sfft'``, ``'hotpants'`` or a registered test method).
    params : dict
        The preset's values (not modified).
    image_header, template_header : astropy.io.fits.Header, optional
        Headers of the science image and the template.
    shape : tuple, optional
        ``(ny, nx)`` of the pair: needed when a map is given as a file.

    Returns
    -------
    Arguments
    """
    defaults = _method_defaults(method)
    maps, files = _read_maps(params, shape)
    params = {k: v for k, v in params.items() if k not in maps}
    merged = {**defaults, **params}
    found = header_noise(image_header, template_header)
    out = dict(params)
    from_headers = {}
    for name, value in found.items():
        if name not in merged or value is None:
            continue
        current = merged[name]
        if current is None or current == PLACEHOLDERS.get((method, name), object()):
            from_headers[name] = value
            out[name] = value
    for gain, key in _MAPS.items():
        if key in merged and merged[key] is None and {**merged, **out}.get(gain) is not None:
            out[key] = True
    noise = {name: ({**merged, **out}.get(name)) for name in NOISE_PARAMS if name in merged}
    return Arguments(out, from_headers, noise, maps, files)
