"""A science/template pair as the application holds it: arrays, masks, noise maps, headers, WCS.

Loading reads FITS and Rice-compressed ``.fits.fz`` files. The image HDU is the
first HDU holding a 2-D image unless a name or number is given, either as an
argument or DS9-style in the path (``frame.fits[SCI]``, ``frame.fits.fz[1]``).
Every problem a user can cause (not a FITS file, a cube, mismatched shapes, a
truncated file) raises :class:`diffgui.engine.errors.InputError` naming the file.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from diffgui.engine.errors import InputError, as_image, as_mask, as_noise

__all__ = ["Pair", "FitsImage", "read_fits_image", "split_hdu_spec", "load_pair", "demo_pair", "crop_pair"]

HduSpec = Union[int, str, None]

_MASK_NAMES = ("MASK", "BPM", "DQ", "FLAGS")
_ERR_NAMES = ("ERR", "ERROR", "SIGMA", "NOISE", "RMS", "UNCERT")
_VAR_NAMES = ("VAR", "VARIANCE", "WHT_VAR")


@dataclass
class FitsImage:
    """One image read from a FITS file.

    Attributes
    ----------
    data : numpy.ndarray
        Native-endian float array (float32 for float32/16-bit input, else float64).
    header : astropy.io.fits.Header
    path : str
    hdu : int
        Index of the HDU the data came from.
    mask, err : numpy.ndarray or None
        Companion extensions of the same file (``MASK``/``DQ``..., ``ERR``/``VAR``...).
    """

    data: np.ndarray
    header: object
    path: str
    hdu: int
    mask: Optional[np.ndarray] = None
    err: Optional[np.ndarray] = None


def split_hdu_spec(path: str) -> tuple[str, HduSpec]:
    """Split ``'file.fits[1]'`` or ``'file.fits[SCI]'`` into the path and the HDU."""
    m = re.match(r"^(.*)\[([^\[\]]+)\]$", str(path))
    if not m or os.path.exists(path):
        return str(path), None
    spec = m.group(2).strip()
    return m.group(1), int(spec) if spec.lstrip("-").isdigit() else spec


def _float_dtype(arr) -> np.dtype:
    small = arr.dtype.itemsize <= 2 or (arr.dtype.kind == "f" and arr.dtype.itemsize == 4)
    return np.dtype(np.float32) if small else np.dtype(np.float64)


def _is_image_hdu(hdu) -> bool:
    from astropy.io import fits

    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.header.get("NAXIS", 0) >= 2


def _squeeze(data, name):
    """Drop leading axes of length 1 (``(1, 1, ny, nx)`` radio-style images)."""
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise InputError(
            f"{name} holds a {data.ndim}-D array of shape {data.shape}, not a 2-D image: "
            "choose one plane and save it as its own file (or pick another HDU)."
        )
    return data


def _pick_hdu(hdul, hdu: HduSpec, path: str) -> int:
    names = [h.name for h in hdul]
    if hdu is None:
        for i, h in enumerate(hdul):
            if _is_image_hdu(h):
                return i
        raise InputError(f"{path} has no image HDU (HDUs: {', '.join(names) or 'none'}).")
    if isinstance(hdu, (int, np.integer)):
        if not -len(hdul) <= int(hdu) < len(hdul):
            raise InputError(f"{path} has {len(hdul)} HDUs; HDU {hdu} does not exist.")
        return int(hdu) % len(hdul)
    want = str(hdu).upper()
    if want in names:
        return names.index(want)
    raise InputError(f"{path} has no HDU named {hdu!r} (HDUs: {', '.join(names)}).")


def _companion(hdul, skip: int, shape, wanted, what):
    for i, h in enumerate(hdul):
        if i != skip and h.name.upper() in wanted and _is_image_hdu(h):
            data = h.data
            if data is not None and data.shape == shape:
                return np.asarray(data)
    return None


def read_fits_image(path, hdu: HduSpec = None, name: Optional[str] = None, companions: bool = True) -> FitsImage:
    """Read one 2-D image from a FITS or ``.fits.fz`` file.

    Parameters
    ----------
    path : str or os.PathLike
        File name, optionally with ``[N]`` or ``[EXTNAME]`` appended.
    hdu : int or str, optional
        HDU number or EXTNAME; default: the first HDU that holds a 2-D image
        (so HDU 1 of a tile-compressed file).
    name : str, optional
        How the image is called in messages (default: the file name).
    companions : bool
        Also read ``MASK``/``DQ``/``BPM`` and ``ERR``/``SIGMA``/``VAR`` extensions of the
        same shape from the same file.

    Returns
    -------
    FitsImage

    Raises
    ------
    InputError
        Missing file, not FITS, no image HDU, a cube, a corrupt or truncated file.
    """
    from astropy.io import fits

    path, spec = split_hdu_spec(os.fspath(path))
    if hdu is None:
        hdu = spec
    label = name or os.path.basename(path)
    if not os.path.exists(path):
        raise InputError(f"{label}: file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"{label}: {path} is a folder, not a FITS file.")
    with open(path, "rb") as fh:
        head = fh.read(30)
    if not head.startswith(b"SIMPLE  =") and not head.startswith(b"\x1f\x8b"):
        raise InputError(f"{label}: {path} is not a FITS file (it does not start with 'SIMPLE  =').")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                idx = _pick_hdu(hdul, hdu, path)
                h = hdul[idx]
                raw = h.data
                if raw is None:
                    raise InputError(f"{label}: HDU {idx} of {path} has no data.")
                raw = _squeeze(np.asarray(raw), f"{label} (HDU {idx} of {path})")
                data = as_image(raw, label, dtype=_float_dtype(raw))
                header = h.header.copy()
                mask = err = None
                if companions:
                    m = _companion(hdul, idx, raw.shape, _MASK_NAMES, "mask")
                    mask = None if m is None else as_mask(m, raw.shape, f"{label} mask")
                    e = _companion(hdul, idx, raw.shape, _ERR_NAMES, "err")
                    if e is None:
                        v = _companion(hdul, idx, raw.shape, _VAR_NAMES, "var")
                        e = None if v is None else np.sqrt(np.clip(np.asarray(v, float), 0, None))
                    err = None if e is None else as_noise(e, raw.shape, f"{label} error map")
    except InputError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise InputError(f"{label}: {path} cannot be read as FITS (corrupt or truncated?): {exc}") from None
    return FitsImage(data, header, path, idx, mask, err)


def _wcs_of(header):
    """Celestial WCS of a header, or None when there is none usable."""
    if header is None:
        return None
    try:
        from astropy.wcs import WCS

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header, naxis=2)
        return w if w.has_celestial else None
    except Exception:  # a broken WCS must not stop anyone from looking at pixels
        return None


@dataclass
class Pair:
    """A science image and its template on one pixel grid.

    Attributes
    ----------
    image, template : numpy.ndarray
        2-D float arrays of the same shape (``[y, x]``).
    mask, template_mask : numpy.ndarray or None
        Boolean, True = bad.
    err, template_err : numpy.ndarray or None
        Noise (sigma) maps.
    image_header, template_header : astropy.io.fits.Header or None
    wcs : astropy.wcs.WCS or None
        Celestial WCS of the science image (the pair shares one grid).
    image_path, template_path : str or None
    name : str
        Short label for titles and recent-file lists.
    truth : dict
        Extra known facts (the demo's true transients), empty for real data.
    input_files : dict
        Files the optional maps came from (``{'err': 'noise.fits[1]', ...}``),
        recorded in the results' provenance.
    """

    image: np.ndarray
    template: np.ndarray
    mask: Optional[np.ndarray] = None
    template_mask: Optional[np.ndarray] = None
    err: Optional[np.ndarray] = None
    template_err: Optional[np.ndarray] = None
    image_header: object = None
    template_header: object = None
    wcs: object = None
    image_path: Optional[str] = None
    template_path: Optional[str] = None
    name: str = "pair"
    truth: dict = field(default_factory=dict)
    input_files: dict = field(default_factory=dict)

    def __post_init__(self):
        self.image = as_image(self.image, "image", dtype=_float_dtype(np.asarray(self.image)))
        self.template = as_image(self.template, "template", dtype=_float_dtype(np.asarray(self.template)))
        if self.image.shape != self.template.shape:
            a, b = self.image_path or "image", self.template_path or "template"
            raise InputError(
                f"science and template have different shapes: {a} is {self.image.shape[::-1]} (nx, ny) "
                f"and {b} is {self.template.shape[::-1]}: resample them onto one pixel grid first."
            )
        self.mask = as_mask(self.mask, self.shape, "mask")
        self.template_mask = as_mask(self.template_mask, self.shape, "template_mask")
        if self.err is not None:
            self.err = as_noise(self.err, self.shape, "err")
        if self.template_err is not None:
            self.template_err = as_noise(self.template_err, self.shape, "template_err")
        if self.wcs is None:
            self.wcs = _wcs_of(self.image_header)

    @property
    def shape(self) -> tuple:
        """``(ny, nx)`` of both images."""
        return self.image.shape

    def engine_inputs(self) -> dict:
        """Keyword arguments shared by every engine method (arrays only)."""
        return dict(image=self.image, template=self.template, mask=self.mask,
                    template_mask=self.template_mask, err=self.err, template_err=self.template_err)

    def header_values(self, params: dict) -> dict:
        """Parameters of a method that are unset (None) but known from the FITS headers.

        Gains come from ``GAIN`` (or ``EGAIN``), read noise from ``RDNOISE``
        (``READNOIS``, ``RON``) of each image's header
        (:func:`diffgui.app.arguments.header_noise`).

        Parameters
        ----------
        params : dict
            The method's parameter values (only names present with value None
            are filled).

        Returns
        -------
        dict
            ``{name: value}`` for the parameters the headers supply.
        """
        from .arguments import header_noise

        found = header_noise(self.image_header, self.template_header)
        return {name: value for name, value in found.items()
                if value is not None and name in params and params[name] is None}

    def pixel_to_world(self, x: float, y: float) -> Optional[tuple]:
        """RA, Dec in degrees of 0-based pixel ``(x, y)``, or None without a WCS."""
        if self.wcs is None:
            return None
        try:
            ra, dec = self.wcs.all_pix2world([[x, y]], 0)[0]
        except Exception:
            return None
        return float(ra), float(dec)

    def describe(self) -> dict:
        """Provenance of the inputs (paths, shape, what optional maps are present)."""
        return {
            "name": self.name, "image_path": self.image_path, "template_path": self.template_path,
            "shape": list(self.shape), "has_mask": self.mask is not None,
            "has_template_mask": self.template_mask is not None, "has_err": self.err is not None,
            "has_template_err": self.template_err is not None, "has_wcs": self.wcs is not None,
            **{f"{k}_path": v for k, v in self.input_files.items()},
        }


#: Header keywords that give a saturation level, in order of preference.
SATURATION_KEYWORDS = ("SATURATE", "SATLEVEL", "SATURATN")
#: A value shared by at least this many pixels at the image maximum is a saturation plateau.
_PLATEAU_MIN_PIXELS = 5


def crop_pair(pair, rows: slice, cols: slice, name: str) -> "Pair":
    """The ``[rows, cols]`` cut of ``pair``'s images, masks and noise maps as a new
    :class:`Pair` named ``name``, with the pair's headers (region previews, tuning tiles)."""
    sl = (rows, cols)
    sub = {k: (v[sl] if isinstance(v, np.ndarray) and v.ndim == 2 else v)
           for k, v in pair.engine_inputs().items()}
    return Pair(image=np.ascontiguousarray(sub["image"]), template=np.ascontiguousarray(sub["template"]),
                mask=sub.get("mask"), template_mask=sub.get("template_mask"), err=sub.get("err"),
                template_err=sub.get("template_err"), name=name,
                image_header=getattr(pair, "image_header", None),
                template_header=getattr(pair, "template_header", None))


def saturation_mask(data, header=None, grow: int = 2) -> Optional[np.ndarray]:
    """Saturated pixels of an image (True = saturated), grown by ``grow`` pixels.

    The level is taken from the header (``SATURATE``, ``SATLEVEL``) when present;
    otherwise a plateau of at least five pixels at exactly the image's maximum
    (digitiser or full-well clipping, e.g. 65300 ADU on the pyDIA frames) counts as
    saturation. Unmasked, saturated stars leave the brightest residuals of every
    method and top a candidate list.

    Returns
    -------
    numpy.ndarray or None
        None when nothing is saturated.
    """
    from scipy import ndimage

    level = None
    if header is not None:
        for key in SATURATION_KEYWORDS:
            try:
                level = float(header[key])
                break
            except (KeyError, TypeError, ValueError):
                continue
    finite = np.isfinite(data)
    if not finite.any():
        return None
    if level is None:
        top = np.max(data[finite])
        if np.count_nonzero(data == top) < _PLATEAU_MIN_PIXELS:
            return None
        level = top
    sat = finite & (data >= level)
    if not sat.any():
        return None
    if grow > 0:
        sat = ndimage.binary_dilation(sat, iterations=int(grow))
    return sat


def _with_saturation(mask, data, header):
    sat = saturation_mask(data, header)
    if sat is None:
        return mask
    return sat if mask is None else (np.asarray(mask) != 0) | sat


def _optional_image(src, what, shape):
    """A mask or noise map given as an array or as a file (``[HDU]``/``[EXTNAME]`` allowed)."""
    if src is None or isinstance(src, np.ndarray):
        return src
    data = read_fits_image(src, name=what, companions=False).data
    if data.shape != tuple(shape):
        raise InputError(f"the {what} {src} is {data.shape[1]}x{data.shape[0]} pixels but the images are "
                         f"{shape[1]}x{shape[0]}: give a map of the same pixel grid.")
    return data


def load_pair(science, template, *, science_hdu: HduSpec = None, template_hdu: HduSpec = None,
              mask=None, template_mask=None, err=None, template_err=None, name: Optional[str] = None,
              mask_saturated: bool = True) -> Pair:
    """Load a science/template pair from two FITS (or ``.fits.fz``) files.

    Parameters
    ----------
    science, template : str or os.PathLike
        File names, optionally with ``[N]``/``[EXTNAME]``.
    science_hdu, template_hdu : int or str, optional
        HDU to read (default: first 2-D image HDU).
    mask, template_mask, err, template_err : str, os.PathLike or numpy.ndarray, optional
        Masks (non-zero = bad) and noise maps; by default taken from ``MASK``/``DQ`` and
        ``ERR``/``VAR`` extensions of the same files when present.
    name : str, optional
        Label of the pair (default: the two file names).
    mask_saturated : bool
        Add saturated pixels (see :func:`saturation_mask`) to the masks (default True).

    Returns
    -------
    Pair
    """
    sci = read_fits_image(science, science_hdu, name="science image")
    tmp = read_fits_image(template, template_hdu, name="template")
    if sci.data.shape != tmp.data.shape:
        raise InputError(
            f"science and template have different shapes: {sci.path} is {sci.data.shape[1]}x{sci.data.shape[0]} "
            f"and {tmp.path} is {tmp.data.shape[1]}x{tmp.data.shape[0]} pixels: "
            "resample them onto one pixel grid first."
        )
    shape = sci.data.shape
    m = _optional_image(mask, "mask", shape)
    tm = _optional_image(template_mask, "template mask", shape)
    e = _optional_image(err, "error map", shape)
    te = _optional_image(template_err, "template error map", shape)
    label = name or f"{os.path.basename(sci.path)} - {os.path.basename(tmp.path)}"
    m = sci.mask if m is None else m
    tm = tmp.mask if tm is None else tm
    if mask_saturated:
        m = _with_saturation(m, sci.data, sci.header)
        tm = _with_saturation(tm, tmp.data, tmp.header)
    files = {k: os.fspath(v) for k, v in (("mask", mask), ("template_mask", template_mask), ("err", err),
                                          ("template_err", template_err))
             if v is not None and not isinstance(v, np.ndarray)}
    return Pair(sci.data, tmp.data, mask=m, template_mask=tm,
                err=sci.err if e is None else e, template_err=tmp.err if te is None else te,
                image_header=sci.header, template_header=tmp.header,
                image_path=sci.path, template_path=tmp.path, name=label, input_files=files)


def demo_pair(seed: int = 1) -> Pair:
    """The built-in demo: a simulated pair with known transients (works offline).

    Raises
    ------
    InputError
        When the simulator is not available in this installation.
    """
    try:
        from diffgui.engine.simulation import make_demo_pair
    except ImportError as exc:
        raise InputError(f"the demo pair needs diffgui.engine.simulation, which is not available: {exc}") from None
    sim = make_demo_pair(seed)
    truth = {"transients": getattr(sim, "transients", None), "seed": seed}
    for key in ("stars", "truth"):
        if getattr(sim, key, None) is not None:
            truth[key] = getattr(sim, key)
    return Pair(sim.image, sim.template, err=getattr(sim, "image_noise", None),
                template_err=getattr(sim, "template_noise", None), name=f"demo (seed {seed})", truth=truth)
