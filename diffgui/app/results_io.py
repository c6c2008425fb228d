"""Writing and reading a run's results as one multi-extension FITS file.

Layout::

    HDU 0  PRIMARY   no data; DG* keywords: method, status, timings, versions,
                     inputs; one ``HIERARCH DG PAR <name>`` card per parameter
    HDU n  DIFF, SCORR, CONVOLVED, SCALED, NOISE, PSF, FPSF, FPSF_ERR
                     float32 images with the science WCS
    HDU    KERNEL    image, or the HOTPANTS kernel table, or SFFT coefficients (KCOEFFS)
    HDU    RUNINFO   table with one row: the Run as JSON (exact parameter round-trip)
    HDU    LOG       table of log lines

Files are written to a temporary file in the target folder and renamed into
place; an existing file is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from diffgui.engine.errors import InputError

from .atomic import atomic_write
from .run import Run, jsonable

__all__ = ["save_run", "load_run", "atomic_write", "EXTNAMES", "card_text", "card_text_decode", "header_text"]

EXTNAMES = {"diff": "DIFF", "scorr": "SCORR", "convolved": "CONVOLVED", "scaled": "SCALED",
            "noise": "NOISE", "psf": "PSF", "fpsf": "FPSF", "fpsf_err": "FPSF_ERR", "kernel": "KERNEL"}
_KEYS = {v: k for k, v in EXTNAMES.items()}
_WCS_SKIP = ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "BZERO", "BSCALE", "PCOUNT", "GCOUNT", "XTENSION", "EXTNAME")


_PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"%"}


def card_text(text) -> str:
    """``text`` as FITS allows it in a header card: printable ASCII, anything else
    (and ``%``) percent-encoded from UTF-8, so ``café.fits`` becomes ``caf%C3%A9.fits``.

    :func:`card_text_decode` gives the original back; files mark the encoding with
    ``DGPCTENC = T`` in their primary header.
    """
    out = []
    for ch in str(text):
        out.append(ch if ch in _PRINTABLE else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape")))
    return "".join(out)


def card_text_decode(text) -> str:
    """Inverse of :func:`card_text` (UTF-8 percent-decoding; bad sequences kept as they are)."""
    from urllib.parse import unquote

    return unquote(str(text), encoding="utf-8", errors="surrogateescape")


def header_text(header, key: str, default=None):
    """The text stored by :func:`save_run` in card ``key`` of a primary header, decoded
    (file names and other strings may be non-ASCII)."""
    if key not in header:
        return default
    value = header[key]
    if isinstance(value, str) and header.get("DGPCTENC", False):
        return card_text_decode(value)
    return value


def _card_value(v):
    if v is None:
        return "None"
    if isinstance(v, (bool, int, float, str)) and not (isinstance(v, float) and not np.isfinite(v)):
        return v if not isinstance(v, str) else card_text(v)[:60]
    return json.dumps(jsonable(v))[:60]


def _primary(run: Run, header=None):
    from astropy.io import fits

    hdr = fits.Header()
    hdr["DGMETHOD"] = (run.method, "diffgui subtraction method")
    hdr["DGSTATUS"] = (run.status, "run status")
    hdr["DGRUNID"] = (run.run_id, "run id within the session")
    hdr["DGPCTENC"] = (True, "text cards are percent-encoded UTF-8")
    prov = run.provenance or {}
    for key, card in (("diffgui", "DGVERS"), ("started", "DGSTART"), ("host", "DGHOST"), ("user", "DGUSER")):
        if prov.get(key):
            hdr[card] = card_text(prov[key])[:60]
    pair = prov.get("pair") or {}
    for key, card in (("image_path", "DGSCI"), ("template_path", "DGTMPL"), ("err_path", "DGERR"),
                      ("template_err_path", "DGTERR"), ("mask_path", "DGMASK"),
                      ("template_mask_path", "DGTMASK")):
        if pair.get(key):  # whole name, in CONTINUE cards when long
            hdr[card] = card_text(os.path.basename(str(pair[key])))
    for key, card, comment in (("image_gain", "DGGAIN", "[e-/ADU] science gain used"),
                               ("template_gain", "DGTGAIN", "[e-/ADU] template gain used"),
                               ("image_readnoise", "DGRDN", "[e-] science read noise used"),
                               ("template_readnoise", "DGTRDN", "[e-] template read noise used")):
        value = (prov.get("noise") or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            hdr[card] = (float(value), comment)
    if "total" in run.timings:
        hdr["DGTIME"] = (round(float(run.timings["total"]), 3), "[s] wall time of the run")
    from diffgui.engine.common.quality import header_cards  # the scorecard, QC* cards

    for card, value, comment in header_cards(getattr(run, "quality", None)):
        hdr[card] = (value, comment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VerifyWarning about HIERARCH cards
        for name, value in sorted(run.params.items()):
            try:
                hdr[f"HIERARCH DG PAR {name.upper()}"] = _card_value(value)
            except ValueError:  # value too long for one card: the RUNINFO table has it
                pass
    return fits.PrimaryHDU(header=hdr)


def _image_header(header):
    from astropy.io import fits

    out = fits.Header()
    if header is None:
        return out
    try:
        from astropy.wcs import WCS

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.update(WCS(header, naxis=2).to_header(relax=True))
    except Exception:
        pass
    return out


def _kernel_hdus(kernel):
    from astropy.io import fits
    from astropy.table import Table

    if isinstance(kernel, np.ndarray):
        return [fits.ImageHDU(np.asarray(kernel, np.float32), name="KERNEL")]
    if isinstance(kernel, Table):
        hdu = fits.table_to_hdu(kernel)
        hdu.name = "KERNEL"
        return [hdu]
    if hasattr(kernel, "to_table_hdu"):  # HOTPANTS SpatialKernel: its kernel table
        hdu = kernel.to_table_hdu()
        hdu.name = "KERNEL"
        return [hdu]
    coeffs = getattr(kernel, "kernel_coeffs", None)
    if coeffs is not None:  # SFFTResult
        hdu = fits.ImageHDU(np.asarray(coeffs, np.float64), name="KCOEFFS")
        for attr, card in (("kernel_poly_order", "KPOLY"), ("bg_poly_order", "BGPOLY"),
                           ("flux_poly_order", "FLXPOLY")):
            if getattr(kernel, attr, None) is not None:
                hdu.header[card] = int(getattr(kernel, attr))
        shape = getattr(kernel, "kernel_shape", None)
        if shape is not None:
            hdu.header["KSHAPEY"], hdu.header["KSHAPEX"] = (int(shape[0]), int(shape[1]))
        hdus = [hdu]
        bg = getattr(kernel, "bg_coeffs", None)
        if bg is not None:
            hdus.append(fits.ImageHDU(np.atleast_1d(np.asarray(bg, np.float64)), name="BGCOEFFS"))
        return hdus
    return []


def build_hdulist(run: Run, header=None, dtype=np.float32):
    """The HDUList :func:`save_run` writes (``header``: science header for the WCS)."""
    from astropy.io import fits
    from astropy.table import Table

    hdus = [_primary(run, header)]
    wcs_hdr = _image_header(header)
    for key, extname in EXTNAMES.items():
        val = run.results.get(key)
        if key == "kernel":
            if val is not None:
                hdus.extend(_kernel_hdus(val))
            continue
        if isinstance(val, np.ndarray) and val.ndim == 2:
            hdr = wcs_hdr.copy() if val.shape == run.results.get("diff", val).shape and key != "psf" else None
            hdus.append(fits.ImageHDU(np.asarray(val, dtype), header=hdr, name=extname))
    hp = run.results.get("header")
    if hp is not None and hasattr(hp, "cards") and len(hdus) > 1:
        for card in hp.cards:
            if card.keyword and card.keyword not in _WCS_SKIP and card.keyword not in hdus[1].header:
                try:
                    hdus[1].header.append(card)
                except Exception:
                    pass
    info = Table({"json": [run.to_json()]})
    hdus.append(fits.table_to_hdu(info))
    hdus[-1].name = "RUNINFO"
    if run.log:
        # UTF-8 bytes: a FITS text column is ASCII, log lines may hold file names
        log = fits.table_to_hdu(Table({"line": [str(x).encode("utf-8", "replace") for x in run.log]}))
        log.name = "LOG"
        hdus.append(log)
    return fits.HDUList(hdus)


def save_run(run: Run, path, *, header=None, overwrite: bool = False, dtype=np.float32) -> str:
    """Save a run's results as one multi-extension FITS file.

    Parameters
    ----------
    run : Run
    path : str or os.PathLike
    header : astropy.io.fits.Header, optional
        Science image header; its celestial WCS is copied into the image extensions.
    overwrite : bool
        Replace an existing file (default: refuse with FileExistsError).
    dtype : numpy dtype
        Storage type of the images (float32 by default).

    Returns
    -------
    str
        The path written.
    """
    if not run.results:
        raise InputError("this run has no results to save: run a subtraction first.")
    hdul = build_hdulist(run, header, dtype)
    return atomic_write(path, lambda tmp: hdul.writeto(tmp, overwrite=True, output_verify="silentfix"),
                        overwrite=overwrite)


def load_run(path) -> Run:
    """Read a results file written by :func:`save_run` back into a :class:`Run`."""
    from astropy.io import fits
    from astropy.table import Table

    try:
        with fits.open(os.fspath(path), memmap=False) as hdul:
            names = [h.name for h in hdul]
            if "RUNINFO" not in names:
                raise InputError(f"{path} is not a diffgui results file (no RUNINFO extension).")
            info = json.loads(str(Table.read(hdul["RUNINFO"])["json"][0]))
            run = Run.from_dict(info)
            if not isinstance(run.provenance, dict):
                run.provenance = {}
            pair = run.provenance.setdefault("pair", {})
            for key, card in (("image_path", "DGSCI"), ("template_path", "DGTMPL")):
                if not pair.get(key) and header_text(hdul[0].header, card):
                    pair[key] = header_text(hdul[0].header, card)
            for h in hdul[1:]:
                key = _KEYS.get(h.name)
                if key is None or h.data is None:
                    continue
                if key == "kernel" and not isinstance(h, fits.ImageHDU):
                    run.results[key] = Table.read(h)
                else:
                    run.results[key] = np.asarray(h.data, dtype=np.float64)
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path} cannot be read as a diffgui results file: {exc}") from None
    return run
