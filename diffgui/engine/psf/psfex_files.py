"""PSFEx ``.psf`` files: load into and write from the PSF dict of :mod:`.model`."""

from __future__ import annotations

import os

import numpy as np

from diffgui.engine.errors import InputError
from diffgui.engine.psf.model import as_psf


def load_psfex(filename) -> dict:
    """Load a PSFEx ``.psf`` file into a PSF dict.

    POLZERO (1-based FITS pixels in PSFEx) is converted to 0-based ``x0``/``y0``.
    """
    from astropy.io import fits

    try:
        with fits.open(filename) as hdul:
            hdu = hdul["PSF_DATA"] if "PSF_DATA" in hdul else hdul[1]
            header = hdu.header.copy()
            data = np.array(hdu.data["PSF_MASK"][0], dtype=np.float64)
    except FileNotFoundError:
        raise InputError(f"PSF file {filename!s} does not exist.") from None
    except (OSError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{filename!s} is not a PSFEx .psf file: {exc}") from None
    if data.ndim == 2:
        data = data[None]
    degree = int(header.get("POLDEG1", 0)) if int(header.get("POLNAXIS", 0)) > 0 else 0
    return as_psf({
        "width": header.get("PSFAXIS1", data.shape[2]), "height": header.get("PSFAXIS2", data.shape[1]),
        "ncoeffs": header.get("PSFAXIS3", data.shape[0]),
        "fwhm": header.get("PSF_FWHM"), "sampling": header.get("PSF_SAMP", 1.0), "degree": degree,
        "x0": float(header.get("POLZERO1", 1.0)) - 1.0, "sx": header.get("POLSCAL1", 1.0),
        "y0": float(header.get("POLZERO2", 1.0)) - 1.0, "sy": header.get("POLSCAL2", 1.0),
        "data": data, "header": header,
    }, name=str(filename))


def write_psfex(psf, filename, overwrite: bool = False) -> None:
    """Write a PSF dict as a PSFEx-style ``.psf`` FITS file (atomically).

    ``x0``/``y0`` are written as 1-based POLZERO, as PSFEx does.
    """
    from astropy.io import fits

    p = as_psf(psf)
    if os.path.exists(filename) and not overwrite:
        raise InputError(f"{filename!s} exists: pass overwrite=True to replace it.")
    col = fits.Column(name="PSF_MASK", format=f"{p['data'].size}E",
                      dim=f"({p['width']}, {p['height']}, {p['ncoeffs']})",
                      array=p["data"][None].astype(np.float32))
    hdu = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
    h = hdu.header
    h["LOADED"], h["ACCEPTED"] = int(p.get("nstars", 0)), int(p.get("nstars", 0))
    h["POLNAXIS"] = 2 if p["degree"] > 0 else 0
    if p["degree"] > 0:
        h["POLGRP1"], h["POLNAME1"], h["POLZERO1"], h["POLSCAL1"] = 1, "X_IMAGE", p["x0"] + 1.0, p["sx"]
        h["POLGRP2"], h["POLNAME2"], h["POLZERO2"], h["POLSCAL2"] = 1, "Y_IMAGE", p["y0"] + 1.0, p["sy"]
        h["POLNGRP"], h["POLDEG1"] = 1, p["degree"]
    h["PSF_FWHM"], h["PSF_SAMP"] = p["fwhm"], p["sampling"]
    h["PSFNAXIS"] = 3
    h["PSFAXIS1"], h["PSFAXIS2"], h["PSFAXIS3"] = p["width"], p["height"], p["ncoeffs"]
    from diffgui.engine.common.atomic import atomic_write  # umask permissions, stale temporaries cleaned

    atomic_write(filename, lambda tmp: fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True),
                 overwrite=True)

