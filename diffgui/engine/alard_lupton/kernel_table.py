"""HOTPANTS's "Convolution Kernel Information" table <-> :class:`.kernel.SpatialKernel`.

The methods ``SpatialKernel.to_table_hdu``, ``region_keywords`` and ``from_table``
call these functions.
"""

from __future__ import annotations

import numpy as np

from diffgui.engine.alard_lupton.basis import Basis
from diffgui.engine.alard_lupton.regions import KernelRegion, hotpants_stamp_width
from diffgui.engine.errors import InputError


def kernel_to_table_hdu(kernel):
    """The kernel as HOTPANTS's "Convolution Kernel Information" table."""
    from astropy.io import fits

    nrow = kernel.ncoeff + 1
    cols = []
    for k, reg in enumerate(kernel.regions):
        col = np.zeros(nrow)
        col[1:] = reg.coeffs
        cols.append(fits.Column(name=f"Region{k}", format="D", array=col))
    hdu = fits.BinTableHDU.from_columns(cols, name="Convolution Kernel Information")
    h = hdu.header
    h["OBJECT"] = "Convolution Kernel Information"
    h["PHOTNORM"] = kernel.photnorm
    h["NGAUSS"] = (len(kernel.basis.gaussians), "Number of Gaussian Basis Functions")
    for g, (d, s) in enumerate(kernel.basis.gaussians):
        h[f"DGAUSS{g + 1}"] = (d, "Polynomial Degree")
        h[f"SGAUSS{g + 1}"] = (s, "Gaussian Sigma")
    h["FWKERN"] = (kernel.size, "Kernel Width in Pixels")
    h["CKORDER"] = (kernel.ko, "Spatial Convolution Order")
    h["BGORDER"] = (kernel.bgo, "Background Order")
    # Self-contained: regions, directions and the polynomial frames (FRAMEnn is
    # diffgui's; HOTPANTS recomputes frames from its stamp grid).
    for key, val in region_keywords(kernel).items():
        h[key] = val
    for k, reg in enumerate(kernel.regions):
        x0, x1, y0, y1 = reg.frame
        h[f"FRAME{k:02d}"] = (f"[{x0 + 1}:{x1 + 1},{y0 + 1}:{y1 + 1}]",
                              "Polynomial frame of the region")
    h["IMWIDTH"], h["IMHEIGHT"] = (kernel.shape[1], "Image width"), (kernel.shape[0], "Image height")
    return hdu


def region_keywords(kernel) -> dict:
    """REGIONnn / CONVOLnn / KSUMnn header values (strings, as HOTPANTS writes)."""
    out = {}
    for k, reg in enumerate(kernel.regions):
        x0, x1, y0, y1 = reg.good
        out[f"REGION{k:02d}"] = f"[{x0 + 1}:{x1 + 1},{y0 + 1}:{y1 + 1}]"
        out[f"CONVOL{k:02d}"] = reg.convolved
        out[f"KSUM{k:02d}"] = f"{reg.coeffs[0]:.4f}"
    return out


def kernel_from_table(cls, data, table_header, header=None, shape=None, *, nsx=10, nsy=10,
                      nrx=None, nry=None, rss=None):
    """Rebuild a ``cls`` (SpatialKernel) from a HOTPANTS kernel table
    (see :meth:`SpatialKernel.from_table`)."""
    th = table_header
    header = th if header is None else header
    if shape is None:
        if "IMWIDTH" not in th:
            raise InputError("the image shape is needed to rebuild this kernel table")
        shape = (int(th["IMHEIGHT"]), int(th["IMWIDTH"]))
    ng = [int(th["NGAUSS"])]
    for g in range(int(th["NGAUSS"])):
        ng += [int(th[f"DGAUSS{g + 1}"]), float(th[f"SGAUSS{g + 1}"])]
    r = int(th["FWKERN"]) // 2
    basis = Basis(r, ng)
    ko, bgo = int(th["CKORDER"]), int(th["BGORDER"])
    photnorm = str(th.get("PHOTNORM", header.get("PHOTNORM", "t"))).strip() or "t"
    allnames = list(data.colnames) if hasattr(data, "colnames") else list(data.columns.names)
    names = [n for n in allnames if n.lower().startswith("region")]
    names.sort(key=lambda s: int(s[6:]))
    goods = _region_goods(len(names), header, th, shape)
    if len(goods) > 1:
        nrx = nrx or len({g[0] for g in goods})
        nry = nry or len({g[2] for g in goods})
        fw = hotpants_stamp_width(shape, nrx, nry, nsx, nsy, r, rss if rss else 15)
        buf = fw // 2
    else:
        buf = r
    regions = []
    for k, name in enumerate(names):
        col = np.asarray(data[name], dtype=np.float64)
        x0, x1, y0, y1 = goods[k]
        frame = (max(0, x0 - buf), min(shape[1] - 1, x1 + buf),
                 max(0, y0 - buf), min(shape[0] - 1, y1 + buf))
        for h in (th, header):
            if f"FRAME{k:02d}" in h:
                frame = _parse_region(h[f"FRAME{k:02d}"])
                break
        conv = str(header.get(f"CONVOL{k:02d}", th.get(f"CONVOL{k:02d}", "TEMPLATE"))) \
            .strip().upper() or "TEMPLATE"
        regions.append(KernelRegion(goods[k], frame, col[1:], conv))
    return cls(basis, ko, bgo, regions, shape, photnorm)


def _region_goods(n, header, th, shape):
    """The good area of each of ``n`` regions from REGIONnn (whole image for one)."""
    goods = []
    for k in range(n):
        key = f"REGION{k:02d}"
        if key in header or key in th:
            goods.append(_parse_region(header[key] if key in header else th[key]))
        elif n == 1:
            goods.append((0, shape[1] - 1, 0, shape[0] - 1))
        else:
            raise InputError(f"header has no {key}: cannot place kernel region {k}")
    return goods


def _parse_region(text):
    """'[x1:x2,y1:y2]' (1-based) -> 0-based inclusive (x0, x1, y0, y1)."""
    s = str(text).strip().strip("[]")
    xs, ys = s.split(",")
    x1, x2 = (int(v) for v in xs.split(":"))
    y1, y2 = (int(v) for v in ys.split(":"))
    return (x1 - 1, x2 - 1, y1 - 1, y2 - 1)
