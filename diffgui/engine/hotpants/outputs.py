"""Reading HOTPANTS's output files into arrays, the header and the kernel, and the
residual-gradient check after a run."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from diffgui.engine.errors import InputError
from diffgui.engine.hotpants.command_line import parse_command
from diffgui.engine.hotpants.process import ProcessResult

# Output flag bit meaning "bad output pixel" in the -omi mask.
_OUT_BAD = 0x8000


# ---- reading outputs -----------------------------------------------------------------------

@dataclass
class HotpantsOutputs:
    """Everything one subtraction produced.

    Arrays are native float64; ``mask`` is True at bad output pixels (they
    hold the fill value ``fi`` in ``diff``, ``fin`` in ``noise``).
    """

    diff: np.ndarray
    header: object
    convolved: Optional[np.ndarray] = None
    noise: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    kernel: object = None
    stamps: Optional[np.ndarray] = None
    process: Optional[ProcessResult] = None
    extras: dict = field(default_factory=dict)


def _native(data):
    return np.ascontiguousarray(data, dtype=np.float64)


def read_stamps(path):
    """Substamp centres from a -savexy file, 0-based (n, 2) array."""
    xy = []
    with open(path) as fh:
        for line in fh:
            m = re.search(r"box\(\s*([-\d.]+)\s*,\s*([-\d.]+)", line)
            if m:
                xy.append((float(m.group(1)) - 1, float(m.group(2)) - 1))
    return np.array(xy, dtype=float).reshape(-1, 2)


def _command_options(header):
    cmd = header.get("DIFFCMD")
    if not cmd:
        return {}
    try:
        return parse_command(str(cmd))[1]
    except (InputError, ValueError, IndexError):
        return {}


def read_outputs(diff_path, *, noise_path=None, convolved_path=None, kernel_path=None,
                 mask_path=None, stamps_path=None, options=None) -> HotpantsOutputs:
    """Read the files of a HOTPANTS run.

    Parameters
    ----------
    diff_path : str
        The -outim file. Extra HDUs written by -allm/-cim/-nim/-ndm/-hki are
        read from it when the separate files are not given.
    noise_path, convolved_path, kernel_path, mask_path, stamps_path : str, optional
        The -oni, -oci, -oki, -omi and -savexy files.
    options : dict, optional
        The run's options (for nsx/nsy/rss of multi-region kernels);
        taken from the DIFFCMD header keyword when not given.

    Returns
    -------
    HotpantsOutputs
        ``kernel`` is None when the run wrote no kernel table or the table
        is empty (no stamps; see :func:`check_outputs`).
    """
    from astropy.io import fits

    with fits.open(diff_path, memmap=False) as hdul:
        header = hdul[0].header.copy()
        diff = _native(hdul[0].data)
        extras = {}
        table = None
        for hdu in hdul[1:]:
            obj = str(hdu.header.get("OBJECT", "")).strip().lower()
            if isinstance(hdu, fits.BinTableHDU):
                table = (hdu.data.copy(), hdu.header.copy())
            elif obj.startswith("convolved"):
                extras["convolved"] = _native(hdu.data)
            elif obj.startswith("noise-scaled"):
                extras["scaled"] = _native(hdu.data)
            elif "noise" in obj:
                extras["noise"] = _native(hdu.data)
    out = HotpantsOutputs(diff=diff, header=header, extras=extras)
    out.noise = _native(fits.getdata(noise_path)) if noise_path else extras.get("noise")
    out.convolved = _native(fits.getdata(convolved_path)) if convolved_path else \
        extras.get("convolved")
    if mask_path:
        m = fits.getdata(mask_path)
        out.mask = (np.asarray(m).astype(np.int64) & _OUT_BAD) != 0
    else:
        fill = float(header.get("MASKVAL", 1e-30))
        out.mask = diff == np.float32(fill)
    if kernel_path:
        with fits.open(kernel_path, memmap=False) as kh:
            khead = kh[0].header.copy()
            for hdu in kh[1:]:
                if isinstance(hdu, fits.BinTableHDU):
                    table = (hdu.data.copy(), hdu.header.copy())
        for key in khead:
            if key.startswith(("REGION", "CONVOL")) and key not in header:
                header[key] = khead[key]
    if stamps_path and os.path.exists(stamps_path):
        out.stamps = read_stamps(stamps_path)
        header["NSTAMPS"] = (len(out.stamps), "Stamps used (from -savexy)")
    if table is not None and "KSUM00" in header:
        data, thead = table
        opts = dict(options or _command_options(header))
        from diffgui.engine.alard_lupton import SpatialKernel

        out.kernel = SpatialKernel.from_table(
            data, thead, header, diff.shape, nsx=int(opts.get("nsx", 10)),
            nsy=int(opts.get("nsy", 10)), nrx=opts.get("nrx"), nry=opts.get("nry"),
            rss=opts.get("rss"))
    return out


# ---- after the run ---------------------------------------------------------------------------

def residual_gradient(diff, noise, mask, npix=200_000):
    """Amplitude (in units of the median noise) of a plane fitted to the
    difference over good pixels, edge to edge: a large value means a
    differential sky gradient that bgo=0 did not remove."""
    step = max(1, int(math.sqrt(diff.size / npix)))
    d = diff[::step, ::step]
    n = noise[::step, ::step] if noise is not None else None
    ok = np.isfinite(d)
    if mask is not None:
        ok &= ~mask[::step, ::step]
    if n is not None:
        ok &= n > 0
    if ok.sum() < 50:
        return 0.0
    yy, xx = np.nonzero(ok)
    v = d[ok]
    med = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - med)) or 1.0
    keep = np.abs(v - med) < 3 * mad
    A = np.stack([np.ones(keep.sum()), xx[keep] / d.shape[1] - 0.5, yy[keep] / d.shape[0] - 0.5], 1)
    coef = np.linalg.lstsq(A, v[keep], rcond=None)[0]
    scale = float(np.median(n[ok])) if n is not None else mad
    return float(np.hypot(coef[1], coef[2]) / scale) if scale > 0 else 0.0
