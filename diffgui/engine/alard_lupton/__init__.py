"""Native Alard-Lupton image subtraction: the HOTPANTS algorithm in numpy/scipy.

The model is HOTPANTS's (design notes: hotpants.md sections 2-3): the kernel is a
sum of Gaussian x polynomial basis functions (``ng``), whose amplitudes vary
as polynomials of order ``ko`` over each region while the first one (which
alone carries flux) stays constant, plus a differential background of order
``bgo``. What differs from the executable, on purpose:

- pixels are weighted by their inverse variance (image noise plus the
  convolved image's noise through K^2) instead of uniformly;
- non-finite pixels are masked, and a fit without usable stamps raises
  :class:`~diffgui.engine.errors.FitError` instead of writing zeros;
- the image is convolved by FFT with the kernel varying per pixel (HOTPANTS
  re-evaluates it per block of 2r+1 pixels), in tiles on two threads;
- with ``c b`` the direction is chosen by the residual in science units over
  the science variance on the stamps both directions kept.

Everything else follows the executable: stamps on an nsx x nsy grid per
region (up to nss candidate substamps each, peaks above ft sigma, retried at
ft*sft when fewer than nft of the stamps have one), kernel-sum clipping of
single-stamp fits, iterative replacement of stamps whose figure of merit is
above mean + ks sigma, nrx x nry regions buffered as HOTPANTS buffers them, the
output photometric system (-n), fill values and the bad-pixel spreading (-kfm).

:class:`SpatialKernel` is shared with the executable wrapper: it is what
``run_hotpants(get_kernel=True)`` returns for either backend, rebuilt from a
HOTPANTS kernel table or produced by the native fit, and it evaluates the
kernel at any (x, y).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from diffgui.engine.common.blas import single_thread_blas
from diffgui.engine.common import fft as _fft
from diffgui.engine.errors import FitError, InputError, as_image, as_mask, check_cancel, make_logger

__all__ = [
    "parse_ng",
    "Basis",
    "poly_terms",
    "KernelRegion",
    "SpatialKernel",
    "hotpants_regions",
    "hotpants_stamp_width",
    "NativeResult",
    "subtract",
    "NATIVE_UNSUPPORTED",
    "NATIVE_IGNORED",
]

#: HOTPANTS options the native backend cannot honour (executable only).
NATIVE_UNSUPPORTED = ("pca", "ki", "rf", "rkw")

#: Options the native backend ignores: output formats that mean nothing for
#: arrays, and refinements of the executable it does not reproduce (kcs: the
#: kernel varies per pixel here; fom: the merit is always the variance one).
NATIVE_IGNORED = ("sht", "obs", "obz", "nsht", "nbs", "nbz", "nc", "v", "ef", "sum", "kcs",
                  "mins", "okn", "sconv", "fom", "convvar", "gd")


# ---- basis -------------------------------------------------------------------------------

def parse_ng(ng):
    """Normalise an ``ng`` basis description to a tuple of ``(degree, sigma)``.

    Accepts HOTPANTS's flat form ``(N, d1, s1, ..., dN, sN)`` (sequence or
    text) or a sequence of ``(degree, sigma)`` pairs.
    """
    if isinstance(ng, str):
        ng = ng.split()
    vals = list(ng)
    if not vals:
        raise InputError("ng is empty: give N d1 s1 ... dN sN.")
    if isinstance(vals[0], (tuple, list, np.ndarray)):
        pairs = [(v[0], v[1]) for v in vals]
    else:
        n = float(vals[0])
        if not n.is_integer() or n < 1 or len(vals) != 1 + 2 * int(n):
            raise InputError(f"ng must be N d1 s1 ... dN sN with N >= 1, got {tuple(ng)}")
        pairs = [(vals[1 + 2 * k], vals[2 + 2 * k]) for k in range(int(n))]
    out = []
    for d, s in pairs:
        d, s = float(d), float(s)
        if not d.is_integer() or d < 0 or not (s > 0 and math.isfinite(s)):
            raise InputError(f"ng: degree must be an integer >= 0 and sigma > 0, got ({d}, {s})")
        out.append((int(d), s))
    return tuple(out)


def poly_terms(order: int):
    """HOTPANTS's polynomial term order: x power outer, y power inner, i + j <= order."""
    return [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]


class Basis:
    """The Gaussian x polynomial kernel basis of HOTPANTS.

    Basis function ``n`` is ``x**i y**j exp(-(x^2+y^2)/(2 sigma^2))`` on a
    (2r+1)^2 grid, Gaussian by Gaussian, x power outer. Functions with both
    powers even are normalised to unit sum and, except the first, have the
    first subtracted, so only basis 0 carries flux.

    Attributes
    ----------
    r : int
        Kernel half-width.
    gaussians : tuple of (degree, sigma)
    terms : list of (gaussian index, x power, y power)
    images : ndarray, shape (n, 2r+1, 2r+1)
        The basis functions, indexed [n, y, x] with offsets -r..r.
    """

    def __init__(self, r: int, gaussians):
        self.r = int(r)
        if self.r < 1:
            raise InputError(f"kernel half-width r must be >= 1, got {r}")
        self.gaussians = parse_ng(gaussians)
        ax = np.arange(-self.r, self.r + 1, dtype=np.float64)
        self.terms, self.fx, self.fy, self.scale, self.sub0 = [], [], [], [], []
        self.gauss_1d = []
        images = []
        for g, (deg, sig) in enumerate(self.gaussians):
            gau = np.exp(-ax * ax / (2.0 * sig * sig))
            self.gauss_1d.append(gau)
            for i in range(deg + 1):
                for j in range(deg + 1 - i):
                    px, py = ax ** i * gau, ax ** j * gau
                    if i % 2 == 0 and j % 2 == 0:
                        sc = 1.0 / (px.sum() * py.sum())
                        s0 = bool(images)
                    else:
                        sc, s0 = 1.0, False
                    img = sc * np.outer(py, px)
                    if s0:
                        img = img - images[0]
                    images.append(img)
                    self.terms.append((g, i, j))
                    self.fx.append(px)
                    self.fy.append(py)
                    self.scale.append(sc)
                    self.sub0.append(s0)
        self.images = np.array(images)
        self.scale = np.array(self.scale)
        self.sub0 = np.array(self.sub0)
        self._gram = None

    @property
    def n(self) -> int:
        return len(self.terms)

    @property
    def size(self) -> int:
        return 2 * self.r + 1

    @property
    def gram(self) -> np.ndarray:
        """Gram matrix <B_n, B_m>, for sums of K^2."""
        if self._gram is None:
            flat = self.images.reshape(self.n, -1)
            self._gram = flat @ flat.T
        return self._gram

    def ng(self) -> tuple:
        """The flat HOTPANTS form (N, d1, s1, ...)."""
        out = [len(self.gaussians)]
        for d, s in self.gaussians:
            out += [d, s]
        return tuple(out)


# ---- the spatially varying kernel --------------------------------------------------------

@dataclass
class KernelRegion:
    """Solution of one region.

    Attributes
    ----------
    good : (x0, x1, y0, y1)
        0-based inclusive pixel range this region's solution is used for.
    frame : (x0, x1, y0, y1)
        0-based inclusive buffered range; polynomial coordinates are
        normalised to [-1, 1] over it, as HOTPANTS does.
    coeffs : ndarray
        HOTPANTS layout without the unused row 0: the amplitude of basis 0
        (the kernel sum), (ko+1)(ko+2)/2 coefficients per further basis
        function, then the (bgo+1)(bgo+2)/2 background coefficients.
    convolved : str
        'TEMPLATE' or 'IMAGE': which image this kernel convolves.
    stats : dict
        Fit statistics (merit, number of stamps, ...), when known.
    """

    good: tuple
    frame: tuple
    coeffs: np.ndarray
    convolved: str = "TEMPLATE"
    stats: dict = field(default_factory=dict)

    def norm_xy(self, x, y):
        fx0, fx1, fy0, fy1 = self.frame
        hx = 0.5 * (fx1 - fx0 + 1)
        hy = 0.5 * (fy1 - fy0 + 1)
        return (np.asarray(x, float) - fx0 - hx) / hx, (np.asarray(y, float) - fy0 - hy) / hy

    def contains(self, x, y) -> bool:
        x0, x1, y0, y1 = self.good
        return x0 <= x <= x1 and y0 <= y <= y1


def _poly_values(xn, yn, order):
    """Values of the HOTPANTS polynomial terms at (xn, yn): shape (nterms,) + xn.shape."""
    xn = np.asarray(xn, float)
    yn = np.asarray(yn, float)
    return np.array([xn ** i * yn ** j for i, j in poly_terms(order)])


class SpatialKernel:
    """A spatially varying Alard-Lupton kernel with its differential background.

    Evaluate it with ``kernel(x, y)`` (0-based pixel coordinates of the full
    image; returns the (2r+1)^2 kernel, indexed [dy + r, dx + r]), or apply
    it to a whole image with :meth:`convolve`. The convolution is a true
    convolution: ``out(p) = sum_u K_p(u) image(p - u)``.

    Attributes
    ----------
    basis : Basis
    ko, bgo : int
        Spatial orders of the kernel and of the background.
    regions : list of KernelRegion
    shape : (ny, nx)
        Shape of the image the kernel belongs to.
    photnorm : str
        HOTPANTS's -n: 't', 'i' or 'u'.
    """

    def __init__(self, basis: Basis, ko: int, bgo: int, regions, shape, photnorm: str = "t"):
        self.basis = basis
        self.ko = int(ko)
        self.bgo = int(bgo)
        self.regions = list(regions)
        self.shape = tuple(int(s) for s in shape)
        self.photnorm = str(photnorm).lower()[:1] or "t"
        for reg in self.regions:
            reg.coeffs = np.asarray(reg.coeffs, dtype=np.float64)
            if reg.coeffs.size < self.ncoeff:
                raise InputError(f"kernel region has {reg.coeffs.size} coefficients, "
                                 f"{self.ncoeff} are needed for this basis and ko={ko}, bgo={bgo}")
            reg.coeffs = reg.coeffs[: self.ncoeff]

    # -- sizes
    @property
    def r(self) -> int:
        return self.basis.r

    @property
    def size(self) -> int:
        return self.basis.size

    @property
    def nk(self) -> int:
        return (self.ko + 1) * (self.ko + 2) // 2

    @property
    def nbg(self) -> int:
        return (self.bgo + 1) * (self.bgo + 2) // 2

    @property
    def ncoeff(self) -> int:
        return 1 + (self.basis.n - 1) * self.nk + self.nbg

    # -- evaluation
    def region_index(self, x, y) -> int:
        """Index of the region whose solution applies at (x, y).

        The last region containing the pixel wins (HOTPANTS writes regions
        in order); outside every region, the nearest one.
        """
        best, bestd = 0, None
        for k, reg in enumerate(self.regions):
            x0, x1, y0, y1 = reg.good
            d = max(x0 - x, 0, x - x1) + max(y0 - y, 0, y - y1)
            if d == 0:
                best, bestd = k, 0
            elif bestd is None or (bestd > 0 and d < bestd):
                best, bestd = k, d
        return best

    def amplitudes(self, x, y, region: Optional[int] = None) -> np.ndarray:
        """Amplitude of every basis function at (x, y) (arrays broadcast):
        shape (nbasis,) + shape of x."""
        if region is None:
            region = self.region_index(float(np.mean(x)), float(np.mean(y)))
        reg = self.regions[region]
        xn, yn = reg.norm_xy(x, y)
        p = _poly_values(xn, yn, self.ko)                       # (nk, ...)
        nb = self.basis.n
        c = reg.coeffs[1:1 + (nb - 1) * self.nk].reshape(nb - 1, self.nk)
        rest = np.tensordot(c, p, axes=(1, 0))                  # (nb-1, ...)
        a0 = np.full((1,) + np.shape(xn), reg.coeffs[0])
        return np.concatenate([a0, rest], axis=0)

    def __call__(self, x, y) -> np.ndarray:
        """The kernel at pixel (x, y), shape (2r+1, 2r+1)."""
        a = self.amplitudes(float(x), float(y), self.region_index(float(x), float(y)))
        return np.tensordot(a, self.basis.images, axes=(0, 0))

    def ksum(self, x=None, y=None) -> float:
        """Kernel sum (the photometric scale) at (x, y); the image centre by default.

        Only basis 0 carries flux, so the sum is constant within a region.
        """
        if x is None:
            x, y = (self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0
        return float(self.regions[self.region_index(x, y)].coeffs[0])

    def background(self, x, y, region: Optional[int] = None) -> np.ndarray:
        """Differential background at (x, y) (arrays broadcast)."""
        if region is None:
            region = self.region_index(float(np.mean(x)), float(np.mean(y)))
        reg = self.regions[region]
        xn, yn = reg.norm_xy(x, y)
        p = _poly_values(xn, yn, self.bgo)
        return np.tensordot(reg.coeffs[self.ncoeff - self.nbg:], p, axes=(0, 0))

    def sum_sq(self, x, y, region: Optional[int] = None) -> np.ndarray:
        """Sum of K^2 at (x, y) (the noise gain of the convolution)."""
        a = self.amplitudes(x, y, region)
        flat = a.reshape(a.shape[0], -1)
        return np.einsum("ip,ij,jp->p", flat, self.basis.gram, flat).reshape(np.shape(x))

    def poly_kernels(self, region: int = 0) -> np.ndarray:
        """Kernels K_k with K(x, y) = sum_k P_k(x', y') K_k, shape (nk, 2r+1, 2r+1)."""
        reg = self.regions[region]
        nb = self.basis.n
        c = reg.coeffs[1:1 + (nb - 1) * self.nk].reshape(nb - 1, self.nk)
        kk = np.tensordot(c.T, self.basis.images[1:], axes=(1, 0))
        kk[0] += reg.coeffs[0] * self.basis.images[0]
        return kk

    @property
    def direction(self) -> str:
        """'TEMPLATE' or 'IMAGE' (of the first region)."""
        return self.regions[0].convolved if self.regions else "TEMPLATE"

    def normalizes(self, region: int = 0) -> bool:
        """Whether the outputs of this region are divided by the kernel sum
        (the output is on the photometric system of the convolved image)."""
        conv = self.regions[region].convolved
        return (self.photnorm == "t" and conv == "TEMPLATE") or \
               (self.photnorm == "i" and conv == "IMAGE")

    def __repr__(self):
        ks = ", ".join(f"{reg.coeffs[0]:.4f}" for reg in self.regions)
        return (f"SpatialKernel(size={self.size}, ng={self.basis.ng()}, ko={self.ko}, "
                f"bgo={self.bgo}, regions={len(self.regions)}, ksum=[{ks}], "
                f"convolved={self.direction})")

    # -- convolution
    def convolve(self, image, *, background: bool = True, normalize: bool = False,
                 method: str = "fft", nthreads: int = 0) -> np.ndarray:
        """Convolve a full image with the spatially varying kernel.

        Parameters
        ----------
        image : ndarray
            Image of :attr:`shape` (the one this kernel convolves).
        background : bool
            Add the differential background.
        normalize : bool
            Divide by the kernel sum where the output is on the convolved
            image's photometric system (as HOTPANTS's -oci output).
        method : {'fft', 'hotpants'}
            'fft': the kernel varies per pixel (exact for the model).
            'hotpants': the kernel is re-evaluated per (2r+1)^2 block at the
            block start + r, as the executable does (reproduces its -oci
            output to float32 precision).
        nthreads : int
            FFT threads (0: all cores).

        Returns
        -------
        ndarray
            The convolved image; pixels within r of the edge are computed
            with zeros outside the image ('fft') or left at 0 ('hotpants').
        """
        img = as_image(image, "image")
        if img.shape != self.shape:
            raise InputError(f"image has shape {img.shape}, the kernel was made for {self.shape}")
        img = np.where(np.isfinite(img), img, 0.0)
        out = np.zeros(self.shape)
        for k, reg in enumerate(self.regions):
            if method == "hotpants":
                self._convolve_blocks(img, out, k)
            elif method == "fft":
                _convolve_region_fft(self, k, img, out, nthreads=nthreads)
            else:
                raise InputError(f"method must be 'fft' or 'hotpants', got {method!r}")
            x0, x1, y0, y1 = reg.good
            if background:
                yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
                out[y0:y1 + 1, x0:x1 + 1] += self.background(xx, yy, k)
            if normalize and self.normalizes(k):
                out[y0:y1 + 1, x0:x1 + 1] /= reg.coeffs[0]
        return out

    def _convolve_blocks(self, img, out, k):
        reg = self.regions[k]
        r, L = self.r, self.size
        fx0, fx1, fy0, fy1 = reg.frame
        gx0, gx1, gy0, gy1 = reg.good
        step = L
        for by in range(fy0 + r, fy1 - r + 1, step):
            ey = min(by + step, fy1 - r + 1)
            if ey <= gy0 or by > gy1:
                continue
            for bx in range(fx0 + r, fx1 - r + 1, step):
                ex = min(bx + step, fx1 - r + 1)
                if ex <= gx0 or bx > gx1:
                    continue
                kern = self.amplitudes(bx + r, by + r, k)
                kern = np.tensordot(kern, self.basis.images, axes=(0, 0))
                win = img[by - r:ey + r, bx - r:ex + r]
                view = np.lib.stride_tricks.sliding_window_view(win, (L, L))
                blk = np.einsum("ijkl,kl->ij", view, kern[::-1, ::-1])
                ys, xs = max(by, gy0), max(bx, gx0)
                ye, xe = min(ey, gy1 + 1), min(ex, gx1 + 1)
                out[ys:ye, xs:xe] = blk[ys - by:ye - by, xs - bx:xe - bx]

    # -- HOTPANTS kernel table
    def to_table_hdu(self):
        """The kernel as HOTPANTS's "Convolution Kernel Information" table."""
        from astropy.io import fits

        nrow = self.ncoeff + 1
        cols = []
        for k, reg in enumerate(self.regions):
            col = np.zeros(nrow)
            col[1:] = reg.coeffs
            cols.append(fits.Column(name=f"Region{k}", format="D", array=col))
        hdu = fits.BinTableHDU.from_columns(cols, name="Convolution Kernel Information")
        h = hdu.header
        h["OBJECT"] = "Convolution Kernel Information"
        h["PHOTNORM"] = self.photnorm
        h["NGAUSS"] = (len(self.basis.gaussians), "Number of Gaussian Basis Functions")
        for g, (d, s) in enumerate(self.basis.gaussians):
            h[f"DGAUSS{g + 1}"] = (d, "Polynomial Degree")
            h[f"SGAUSS{g + 1}"] = (s, "Gaussian Sigma")
        h["FWKERN"] = (self.size, "Kernel Width in Pixels")
        h["CKORDER"] = (self.ko, "Spatial Convolution Order")
        h["BGORDER"] = (self.bgo, "Background Order")
        # Self-contained: regions, directions and the polynomial frames (FRAMEnn is
        # diffgui's; HOTPANTS recomputes frames from its stamp grid).
        for key, val in self.region_keywords().items():
            h[key] = val
        for k, reg in enumerate(self.regions):
            x0, x1, y0, y1 = reg.frame
            h[f"FRAME{k:02d}"] = (f"[{x0 + 1}:{x1 + 1},{y0 + 1}:{y1 + 1}]",
                                  "Polynomial frame of the region")
        h["IMWIDTH"], h["IMHEIGHT"] = (self.shape[1], "Image width"), (self.shape[0], "Image height")
        return hdu

    def region_keywords(self) -> dict:
        """REGIONnn / CONVOLnn / KSUMnn header values (strings, as HOTPANTS writes)."""
        out = {}
        for k, reg in enumerate(self.regions):
            x0, x1, y0, y1 = reg.good
            out[f"REGION{k:02d}"] = f"[{x0 + 1}:{x1 + 1},{y0 + 1}:{y1 + 1}]"
            out[f"CONVOL{k:02d}"] = reg.convolved
            out[f"KSUM{k:02d}"] = f"{reg.coeffs[0]:.4f}"
        return out

    @classmethod
    def from_table(cls, data, table_header, header=None, shape=None, *, nsx=10, nsy=10,
                   nrx=None, nry=None, rss=None):
        """Rebuild a kernel from a HOTPANTS kernel table.

        Parameters
        ----------
        data : table-like
            The table rows (columns ``Region0``, ``Region1``, ...).
        table_header : Header
            The table's header (NGAUSS, DGAUSSn, SGAUSSn, FWKERN, CKORDER, BGORDER).
        header : Header, optional
            A header holding REGIONnn and CONVOLnn (the difference image's, or
            the -oki file's primary header); tables written by
            :meth:`to_table_hdu` carry them themselves.
        shape : (ny, nx), optional
            Image shape (default: from a :meth:`to_table_hdu` table).
        nsx, nsy, nrx, nry, rss : int
            The run's stamp grid, region grid and substamp half-width; only
            needed to rebuild the buffered frames of multi-region runs.
        """
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
        goods = []
        for k in range(len(names)):
            key = f"REGION{k:02d}"
            if key in header or key in th:
                goods.append(_parse_region(header[key] if key in header else th[key]))
            elif len(names) == 1:
                goods.append((0, shape[1] - 1, 0, shape[0] - 1))
            else:
                raise InputError(f"header has no {key}: cannot place kernel region {k}")
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


def _parse_region(text):
    """'[x1:x2,y1:y2]' (1-based) -> 0-based inclusive (x0, x1, y0, y1)."""
    s = str(text).strip().strip("[]")
    xs, ys = s.split(",")
    x1, x2 = (int(v) for v in xs.split(":"))
    y1, y2 = (int(v) for v in ys.split(":"))
    return (x1 - 1, x2 - 1, y1 - 1, y2 - 1)


def hotpants_stamp_width(shape, nrx, nry, nsx, nsy, r, rss) -> int:
    """HOTPANTS's stamp width (fwStamp), which sets the buffer of multi-region runs."""
    ny, nx = shape
    fwk, fwss = 2 * r + 1, 2 * rss + 1
    fw = min(nx // nrx // nsx, ny // nry // nsy) - fwk
    fw -= 1 if fw % 2 == 0 else 0
    if fw < fwss:
        fw = fwss + fwk
    return fw


def hotpants_regions(shape, nrx, nry, nsx, nsy, r, rss):
    """Good and buffered (frame) ranges of HOTPANTS's nrx x nry regions.

    Returns
    -------
    list of (good, frame), each (x0, x1, y0, y1) 0-based inclusive, in
    HOTPANTS's order (y outer, x inner).
    """
    ny, nx = shape
    xmax, ymax = nx - 1, ny - 1
    out = []
    n = nrx * nry
    buf = hotpants_stamp_width(shape, nrx, nry, nsx, nsy, r, rss) // 2 if n > 1 else r
    for j in range(nry):
        for i in range(nrx):
            gx0, gy0 = i * xmax // nrx, j * ymax // nry
            gx1, gy1 = min((i + 1) * xmax // nrx, xmax), min((j + 1) * ymax // nry, ymax)
            good = (gx0, gx1, gy0, gy1)
            frame = (max(0, gx0 - buf), min(xmax, gx1 + buf), max(0, gy0 - buf), min(ymax, gy1 + buf))
            out.append((good, frame))
    return out


# ---- FFT convolution of one region, per pixel kernel variation ----------------------------

_TILE = 1024
_WORKERS = 2
# Below this fraction of bad pixels in a tile, their |K| footprints are added directly.
_SPARSE_BAD = 0.002


def _tile_plan(good, r, tile=None):
    """Tile cores covering the good range, balanced so that every tile uses
    one FFT shape of at most about ``tile`` pixels per side."""
    tile = tile or _TILE
    x0, x1, y0, y1 = good
    shape = []
    for n in (y1 - y0 + 1, x1 - x0 + 1):
        nt = max(1, math.ceil(n / max(64, tile - 2 * r)))
        core = math.ceil(n / nt)
        shape.append(_fft.next_fast_size(core + 2 * r))
    fy, fx = shape
    cy, cx = fy - 2 * r, fx - 2 * r
    tiles = []
    for ty in range(y0, y1 + 1, cy):
        for tx in range(x0, x1 + 1, cx):
            tiles.append((ty, min(ty + cy, y1 + 1), tx, min(tx + cx, x1 + 1)))
    return tiles, (fy, fx)


def _window(arr, ty0, ty1, tx0, tx1, r, fshape, fill=0.0):
    """arr[ty0-r:ty1+r, tx0-r:tx1+r] in a zero array of fshape (zeros outside the image)."""
    ny, nx = arr.shape
    buf = np.zeros(fshape)
    ya, yb = max(0, ty0 - r), min(ny, ty1 + r)
    xa, xb = max(0, tx0 - r), min(nx, tx1 + r)
    sub = arr[ya:yb, xa:xb]
    oy, ox = ya - (ty0 - r), xa - (tx0 - r)
    buf[oy:oy + sub.shape[0], ox:ox + sub.shape[1]] = sub
    if fill is not None:
        bad = ~np.isfinite(buf)
        if bad.any():
            buf[bad] = fill
    return buf


def _convolve_region_fft(kernel: SpatialKernel, k: int, img, out, nthreads=0):
    reg = kernel.regions[k]
    r = kernel.r
    tiles, fshape = _tile_plan(reg.good, r)
    FK = [_fft.rfft2(_fft.kernel_to_origin(kk, fshape), nthreads)
          for kk in kernel.poly_kernels(k)]
    terms = poly_terms(kernel.ko)
    for ty0, ty1, tx0, tx1 in tiles:
        F = _fft.rfft2(_window(img, ty0, ty1, tx0, tx1, r, fshape), nthreads)
        xn, yn = reg.norm_xy(np.arange(tx0, tx1), np.arange(ty0, ty1))
        acc = np.zeros((ty1 - ty0, tx1 - tx0))
        for (i, j), fk in zip(terms, FK):
            c = _fft.irfft2(F * fk, fshape, nthreads)[r:r + ty1 - ty0, r:r + tx1 - tx0]
            if i or j:
                c *= (yn ** j)[:, None] * (xn ** i)[None, :]
            acc += c
        out[ty0:ty1, tx0:tx1] = acc


# ---- options -----------------------------------------------------------------------------

def _hotpants_defaults() -> dict:
    from diffgui.engine import params

    return {s.name: s.default for s in params.hotpants_option_specs()}


def _resolve_options(options) -> dict:
    opts = _hotpants_defaults()
    for key, value in (options or {}).items():
        name = str(key).strip().lstrip("-").lower()
        if value is not None:
            opts[name] = value
    for name in NATIVE_UNSUPPORTED:
        if opts.get(name) not in (None, False):
            raise InputError(f"HOTPANTS option '{name}' is not supported by the native backend: "
                             "use backend='exe' with the HOTPANTS executable.")
    for name in ("ssf", "cmp"):
        if opts.get(name):
            raise InputError(f"option '{name}' (a file) is read by run_hotpants; pass the "
                             "positions to the native backend as stamp_xy.")
    for p in "ti":
        if opts.get(p + "uk") is None:
            opts[p + "uk"] = opts[p + "u"]
    if int(opts["rss"]) < int(opts["r"]):
        raise InputError(f"rss ({opts['rss']}) must be >= r ({opts['r']}).")
    if not opts[("tu")] > opts["tl"] or not opts["iu"] > opts["il"]:
        raise InputError("upper thresholds tu/iu must be above the lower ones tl/il.")
    return opts


# ---- images and their noise --------------------------------------------------------------

class _Side:
    """One input image: data, bad pixels and a variance model."""

    def __init__(self, name, data, mask, sigma, gain, rdnoise, lower, upper, upper_stamp,
                 pedestal=0.0):
        self.name = name
        self.data = data if not pedestal else data - pedestal
        self.sigma = sigma
        self.gain = float(gain) if gain else 1.0
        self.rdnoise = float(rdnoise or 0.0)
        self.lower, self.upper, self.upper_stamp = lower - pedestal, upper - pedestal, \
            upper_stamp - pedestal
        nonfinite = ~np.isfinite(self.data)
        self.all_finite = not nonfinite.any()
        with np.errstate(invalid="ignore"):
            bad = nonfinite | (self.data >= self.upper) | (self.data <= self.lower)
        if mask is not None:
            bad |= mask
        if sigma is not None:
            bad |= ~(np.isfinite(sigma) & (sigma > 0))
        self.bad = bad
        finite = self.data[::7, ::7]
        finite = finite[np.isfinite(finite)]
        self.fill = float(np.median(finite)) if finite.size else 0.0

    def values(self, sl):
        v = self.data[sl]
        if not self.all_finite and not np.isfinite(v).all():
            v = np.where(np.isfinite(v), v, self.fill)
        return v

    def var(self, sl, smooth=False, values=None):
        """Variance of the pixels in ``sl`` (ADU^2); ``values`` may pass
        ``self.values(sl)`` when the caller already has them."""
        if self.sigma is not None:
            s = self.sigma[sl]
            v = np.where(np.isfinite(s) & (s > 0), s * s, np.inf)
            return v
        d = self.values(sl) if values is None else values
        if smooth and min(d.shape[-2:]) >= 3:
            from scipy import ndimage

            d = ndimage.uniform_filter(d, 3, mode="nearest")
        return np.abs(d) / self.gain + (self.rdnoise / self.gain) ** 2


# ---- stamps -------------------------------------------------------------------------------

def _cells(frame, nsx, nsy):
    fx0, fx1, fy0, fy1 = frame
    w, h = fx1 - fx0 + 1, fy1 - fy0 + 1
    out = []
    for l in range(nsy):
        for k in range(nsx):
            out.append((fx0 + k * w // nsx, fx0 + (k + 1) * w // nsx - 1,
                        fy0 + l * h // nsy, fy0 + (l + 1) * h // nsy - 1))
    return out


def _sky_sigma(side: _Side, sl):
    d = side.data[sl][::2, ::2]
    b = side.bad[sl][::2, ::2]
    v = d[~b]
    if v.size < 10:
        return None
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    if not mad > 0:
        mad = float(np.std(v)) or 1.0
    return med, mad


def _find_candidates(sides, region, opts, ft, stamp_xy=None, log=None, detect=None):
    """Candidate substamp centres per stamp cell, best first.

    A candidate is a local maximum of the S/N in the ``detect`` images
    (the larger of their S/N when there are two) above ``ft`` whose
    (rss+r) box is free of bad, saturated or non-finite pixels in both
    images (``sides``).
    """
    detect = sides if detect is None else detect
    good, frame = region
    r, rss, nss = int(opts["r"]), int(opts["rss"]), int(opts["nss"])
    ny, nx = sides[0].data.shape
    half = rss + r
    lo_x, hi_x = max(frame[0], half), min(frame[1], nx - 1 - half)
    lo_y, hi_y = max(frame[2], half), min(frame[3], ny - 1 - half)
    cells = _cells(frame, int(opts["nsx"]), int(opts["nsy"]))

    def box_ok(x, y):
        sl = (slice(y - half, y + half + 1), slice(x - half, x + half + 1))
        for s in sides:
            if s.bad[sl].any():
                return False
            with np.errstate(invalid="ignore"):
                if (s.data[sl] >= s.upper_stamp).any():
                    return False
        return True

    result = []
    for (cx0, cx1, cy0, cy1) in cells:
        ax0, ax1 = max(cx0, lo_x), min(cx1, hi_x)
        ay0, ay1 = max(cy0, lo_y), min(cy1, hi_y)
        chosen = []
        if ax1 < ax0 or ay1 < ay0:
            result.append(chosen)
            continue
        if stamp_xy is not None and len(stamp_xy):
            xs = np.round(stamp_xy[:, 0]).astype(int)
            ys = np.round(stamp_xy[:, 1]).astype(int)
            sel = np.nonzero((xs >= ax0) & (xs <= ax1) & (ys >= ay0) & (ys <= ay1))[0]
            for idx in sel:
                x, y = int(xs[idx]), int(ys[idx])
                if box_ok(x, y) and all(abs(x - a) > 2 or abs(y - b) > 2 for a, b in chosen):
                    chosen.append((x, y))
                if len(chosen) >= nss:
                    break
            if not int(opts.get("afssc", 1)):
                result.append(chosen)
                continue
        if len(chosen) < nss:
            sl = (slice(cy0, cy1 + 1), slice(cx0, cx1 + 1))
            snr = None
            for s in detect:
                st = _sky_sigma(s, sl)
                if st is None:
                    continue
                sub = s.data[ay0 - 1:ay1 + 2, ax0 - 1:ax1 + 2]
                z = (sub - st[0]) / st[1]
                snr = z if snr is None else np.maximum(snr, z)
            if snr is not None:
                snr = np.where(np.isfinite(snr), snr, -np.inf)
                c = snr[1:-1, 1:-1]
                peak = c > ft
                if peak.any():
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            if dy or dx:
                                peak &= c >= snr[1 + dy:snr.shape[0] - 1 + dy,
                                                 1 + dx:snr.shape[1] - 1 + dx]
                    py, px = np.nonzero(peak)
                    order = np.argsort(-c[py, px], kind="stable")
                    for o in order:
                        x, y = int(px[o] + ax0), int(py[o] + ay0)
                        if all(abs(x - a) > 2 or abs(y - b) > 2 for a, b in chosen) and box_ok(x, y):
                            chosen.append((x, y))
                            if len(chosen) >= nss:
                                break
        result.append(chosen)
    return result


# ---- per-stamp design matrices -------------------------------------------------------------

def _toeplitz(f, nin, nout):
    """Matrix T (nin, nout) with (w @ T)[c] = sum_u f[u + r] w[c + r - u] (true convolution)."""
    r = (len(f) - 1) // 2
    T = np.zeros((nin, nout))
    c = np.arange(nout)
    for u in range(-r, r + 1):
        T[c + r - u, c] = f[u + r]
    return T


class _StampDesign:
    """Convolutions of the basis with the convolving image on a set of substamps."""

    def __init__(self, basis: Basis, rss: int):
        self.basis = basis
        self.rss = rss
        r = basis.r
        self.h = 2 * (rss + r) + 1
        self.n = 2 * rss + 1
        # x filters per (gaussian, x power), y filters per (gaussian, y power)
        self.xf_index, self.yf_index = {}, {}
        xs, ys = [], []
        ax = np.arange(-r, r + 1, dtype=np.float64)
        for g, (deg, sig) in enumerate(basis.gaussians):
            gau = basis.gauss_1d[g]
            for p in range(deg + 1):
                self.xf_index[(g, p)] = len(xs)
                xs.append(_toeplitz(ax ** p * gau, self.h, self.n))
                self.yf_index[(g, p)] = len(ys)
                ys.append(_toeplitz(ax ** p * gau, self.h, self.n).T)
        self.TX = np.concatenate(xs, axis=1)          # (h, nfx*n)
        self.TY = np.stack(ys)                         # (nfy, n, h)
        self.nfx = len(xs)

    def convolve(self, windows):
        """windows (m, h, h) -> basis convolutions (m, n*n, nbasis)."""
        m = windows.shape[0]
        n, h = self.n, self.h
        R = (windows.reshape(m * h, h) @ self.TX).reshape(m, h, self.nfx, n)
        out = np.empty((m, n, n, self.basis.n))
        for b, (g, i, j) in enumerate(self.basis.terms):
            Ri = R[:, :, self.xf_index[(g, i)], :]              # (m, h, n)
            out[..., b] = np.matmul(self.TY[self.yf_index[(g, j)]], Ri) * self.basis.scale[b]
        sub = np.nonzero(self.basis.sub0)[0]
        if sub.size:
            out[..., sub] -= out[..., :1]
        return out.reshape(m, n * n, self.basis.n)


@dataclass
class _Stamps:
    xy: np.ndarray          # (m, 2) centres
    A: np.ndarray           # (m, npix, nbasis)
    Q: np.ndarray           # (m, npix, nbg)
    P: np.ndarray           # (m, nk)
    Y: np.ndarray           # (m, npix) target pixels
    VS: np.ndarray          # (m, npix) target variance (smoothed model)
    VC: np.ndarray          # (m, h, h) convolving-image variance windows
    VCc: np.ndarray         # (m, npix) convolving-image variance on the substamp


def _build_stamps(xy, conv: _Side, targ: _Side, design: _StampDesign, frame, ko, bgo):
    rss, r = design.rss, design.basis.r
    half = rss + r
    wins, ys, vs, vcs = [], [], [], []
    for x, y in xy:
        wsl = (slice(y - half, y + half + 1), slice(x - half, x + half + 1))
        ssl = (slice(y - rss, y + rss + 1), slice(x - rss, x + rss + 1))
        wins.append(conv.values(wsl))
        ys.append(targ.values(ssl).ravel())
        vs.append(targ.var(ssl, smooth=True).ravel())
        vcs.append(conv.var(wsl, smooth=True))
    wins = np.array(wins)
    A = design.convolve(wins)
    xy = np.asarray(xy, dtype=float)
    reg = KernelRegion(None, frame, np.zeros(1))
    xn, yn = reg.norm_xy(xy[:, 0], xy[:, 1])
    P = _poly_values(xn, yn, ko).T                                   # (m, nk)
    off = np.arange(-rss, rss + 1)
    px = xy[:, 0][:, None, None] + off[None, None, :]
    py = xy[:, 1][:, None, None] + off[None, :, None]
    pxn, pyn = reg.norm_xy(np.broadcast_to(px, (len(xy), len(off), len(off))),
                           np.broadcast_to(py, (len(xy), len(off), len(off))))
    Q = _poly_values(pxn, pyn, bgo)                                  # (nbg, m, n, n)
    Q = np.moveaxis(Q, 0, -1).reshape(len(xy), -1, Q.shape[0])
    VC = np.array(vcs)
    VCc = VC[:, r:r + design.n, r:r + design.n].reshape(len(xy), -1)
    return _Stamps(xy, A, Q, P, np.array(ys), np.array(vs), VC, VCc)


def _assemble(M, b, P, nb, nbg):
    """Global normal equations from per-stamp ones.

    Local coefficients of stamp s are (a0, a_n = sum_k c_nk P_sk for n >= 1,
    background terms); the global unknowns are (a0, c_nk, background), in
    HOTPANTS's layout.
    """
    m, nk = P.shape
    nkb = (nb - 1) * nk
    ntot = 1 + nkb + nbg
    G = np.zeros((ntot, ntot))
    h = np.zeros(ntot)
    ks = slice(1, 1 + nkb)
    bs = slice(1 + nkb, ntot)
    PP = (P[:, :, None] * P[:, None, :]).reshape(m, -1)
    Mkk = M[:, 1:nb, 1:nb].reshape(m, -1)
    G[ks, ks] = (Mkk.T @ PP).reshape(nb - 1, nb - 1, nk, nk).transpose(0, 2, 1, 3) \
        .reshape(nkb, nkb)
    G[0, 0] = M[:, 0, 0].sum()
    G[0, ks] = np.einsum("sm,sl->ml", M[:, 0, 1:nb], P).ravel()
    G[bs, bs] = M[:, nb:, nb:].sum(axis=0)
    G[bs, 0] = M[:, nb:, 0].sum(axis=0)
    G[bs, ks] = np.einsum("sbm,sl->bml", M[:, nb:, 1:nb], P).reshape(nbg, nkb)
    G[ks, 0] = G[0, ks]
    G[0, bs] = G[bs, 0]
    G[ks, bs] = G[bs, ks].T
    h[0] = b[:, 0].sum()
    h[ks] = np.einsum("sm,sl->ml", b[:, 1:nb], P).ravel()
    h[bs] = b[:, nb:].sum(axis=0)
    return G, h


def _local_coeffs(theta, P, nb, nk, nbg):
    """Per-stamp local coefficients (m, nb + nbg) from the global ones."""
    m = P.shape[0]
    out = np.empty((m, nb + nbg))
    out[:, 0] = theta[0]
    out[:, 1:nb] = P @ theta[1:1 + (nb - 1) * nk].reshape(nb - 1, nk).T
    out[:, nb:] = theta[1 + (nb - 1) * nk:]
    return out


def _solve_scaled(M, b, ridge=1e-10):
    """Solve M x = b (batched) with Jacobi scaling and a tiny ridge."""
    d = np.sqrt(np.abs(np.diagonal(M, axis1=-2, axis2=-1)))
    d = np.where(d > 0, d, 1.0)
    Ms = M / d[..., :, None] / d[..., None, :]
    eye = np.eye(M.shape[-1]) * ridge
    bs = b / d
    try:
        x = np.linalg.solve(Ms + eye, bs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        x = np.linalg.lstsq(Ms + eye, bs, rcond=None)[0] if M.ndim == 2 else \
            np.array([np.linalg.lstsq(mm + eye, bb, rcond=None)[0] for mm, bb in zip(Ms, bs)])
    return x / d


def _clipped_stats(v, nsig, iters=5):
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 0.0
    keep = np.ones(v.size, bool)
    for _ in range(iters):
        mu, sd = v[keep].mean(), v[keep].std()
        new = np.abs(v - mu) <= nsig * sd if sd > 0 else keep
        if new.sum() < 2 or (new == keep).all():
            break
        keep = new
    return float(v[keep].mean()), float(v[keep].std())


class _DirectionFit:
    """Kernel fit for one convolution direction over one region."""

    def __init__(self, conv, targ, cands, frame, basis, design, opts, log, cancel):
        self.conv, self.targ = conv, targ
        self.cands = cands
        self.frame = frame
        self.basis, self.design = basis, design
        self.ko, self.bgo = int(opts["ko"]), int(opts["bgo"])
        self.ks, self.ssig = float(opts["ks"]), float(opts["ssig"])
        self.log, self.cancel = log, cancel
        self.nb = basis.n
        self.nbg = (self.bgo + 1) * (self.bgo + 2) // 2
        self.cur = [0 if c else -1 for c in cands]
        self.cache = {}
        self.theta = None
        self.weighted = False

    def _keys(self):
        return [(c, i) for c, i in enumerate(self.cur) if i >= 0]

    def _stamps(self, keys):
        missing = [k for k in keys if k not in self.cache]
        if missing:
            xy = [self.cands[c][i] for c, i in missing]
            st = _build_stamps(xy, self.conv, self.targ, self.design, self.frame, self.ko, self.bgo)
            for q, k in enumerate(missing):
                self.cache[k] = {"X": np.ascontiguousarray(np.concatenate([st.A[q], st.Q[q]], axis=1)),
                                 "P": st.P[q], "Y": st.Y[q], "VS": st.VS[q], "VC": st.VC[q],
                                 "VCc": st.VCc[q], "xy": st.xy[q], "W": None}
                if self.theta is not None and self.weighted:
                    self._reweight([k])
        return keys

    def _set_weights(self, k, W):
        s = self.cache[k]
        s["W"] = W
        Xs = s["X"] * np.sqrt(W)[:, None]
        s["M"] = Xs.T @ Xs
        s["b"] = s["X"].T @ (W * s["Y"])
        s["yy"] = float(np.dot(W * s["Y"], s["Y"]))

    def _initial_weights(self, keys, ks_guess=1.0):
        for k in keys:
            s = self.cache[k]
            if s["W"] is None:
                # Before the kernel is known, guess sum(K^2) ~ ksum^2 / 4.
                self._set_weights(k, 1.0 / (s["VS"] + ks_guess ** 2 * s["VCc"] * 0.25))

    def _normal(self, keys):
        M = np.stack([self.cache[k]["M"] for k in keys])
        b = np.stack([self.cache[k]["b"] for k in keys])
        yy = np.array([self.cache[k]["yy"] for k in keys])
        P = np.stack([self.cache[k]["P"] for k in keys])
        return M, b, yy, P

    def _solo_ksums(self, keys):
        M, b, _, _ = self._normal(keys)
        idx = list(range(self.nb)) + [self.nb]
        sol = _solve_scaled(M[:, idx][:, :, idx], b[:, idx])
        return sol[:, 0]

    def _global(self, keys):
        M, b, yy, P = self._normal(keys)
        nk = (self.ko + 1) * (self.ko + 2) // 2
        ko = self.ko
        # Too few stamps for the spatial polynomial: lower the order for this fit.
        while ko > 0 and len(keys) < (ko + 1) * (ko + 2) // 2 + 1:
            ko -= 1
        if ko < self.ko and not getattr(self, "_ko_warned", False):
            self._ko_warned = True
            self.log(f"    only {len(keys)} stamps: kernel spatial order lowered from "
                     f"{self.ko} to {ko} for this region")
        nke = (ko + 1) * (ko + 2) // 2
        Pe = P[:, :nke]
        G, h = _assemble(M, b, Pe, self.nb, self.nbg)
        th = _solve_scaled(G, h, ridge=1e-12)
        nb, nbg = self.nb, self.nbg
        theta = np.zeros(1 + (nb - 1) * nk + nbg)
        theta[0] = th[0]
        theta[1:1 + (nb - 1) * nk].reshape(nb - 1, nk)[:, :nke] = \
            th[1:1 + (nb - 1) * nke].reshape(nb - 1, nke)
        theta[1 + (nb - 1) * nk:] = th[1 + (nb - 1) * nke:]
        alpha = _local_coeffs(theta, P, nb, nk, nbg)
        Ma = np.matmul(M, alpha[:, :, None])[:, :, 0]
        chi2 = yy - 2 * np.einsum("sa,sa->s", alpha, b) + np.einsum("sa,sa->s", alpha, Ma)
        npix = self.cache[keys[0]]["Y"].size
        return theta, chi2 / npix, alpha

    def _reweight(self, keys):
        """Weights from the target variance plus the convolving image's
        variance through the current kernel squared."""
        L, h, n = self.basis.size, self.design.h, self.design.n
        for k in keys:
            s = self.cache[k]
            a = self._local_alpha(s)
            K = np.tensordot(a[:self.nb], self.basis.images, axes=(0, 0))
            F = np.fft.rfft2(s["VC"]) * np.fft.rfft2(K * K, s=(h, h))
            vc = np.fft.irfft2(F, s=(h, h))[L - 1:L - 1 + n, L - 1:L - 1 + n]
            self._set_weights(k, 1.0 / (s["VS"] + np.maximum(vc.ravel(), 0.0)))

    def _local_alpha(self, s):
        nk = (self.ko + 1) * (self.ko + 2) // 2
        return _local_coeffs(self.theta, s["P"][None], self.nb, nk, self.nbg)[0]

    def run(self):
        keys = self._stamps(self._keys())
        if not keys:
            return None
        log = self.log
        self._initial_weights(keys)
        # Stamps whose own constant-kernel fit gives an outlying kernel sum go first.
        if len(keys) >= 5:
            ksums = self._solo_ksums(keys)
            mu, sd = _clipped_stats(ksums, self.ssig)
            out = [k for k, v in zip(keys, ksums) if sd > 0 and abs(v - mu) > self.ks * sd]
            if out and len(out) < len(keys) - 3:
                log(f"    {len(out)} stamps with outlying kernel sums "
                    f"(mean {mu:.4f}, sd {sd:.4f}) replaced")
                self._advance([c for c, _ in out])
                keys = self._stamps(self._keys())
                self._initial_weights(keys, mu)
        self.theta, merit, _ = self._global(keys)
        # Inverse-variance weights with the kernel's own noise, twice.
        for _ in range(2):
            self._reweight(keys)
            self.weighted = True
            self.theta, merit, _ = self._global(keys)
        for it in range(30):
            check_cancel(self.cancel)
            mu, sd = _clipped_stats(merit, self.ssig)
            bad = [k for k, m in zip(keys, merit) if not np.isfinite(m) or m > mu + self.ks * sd]
            if not bad or len(keys) - len(bad) < 3:
                break
            self._advance([c for c, _ in bad])
            keys = self._stamps(self._keys())
            if not keys:
                return None
            self.theta, merit, _ = self._global(keys)
        self._reweight(keys)
        self.theta, merit, alpha = self._global(keys)
        self.keys, self.merit, self.alpha = keys, merit, alpha
        return self

    def _advance(self, cells):
        for c in cells:
            old = (c, self.cur[c])
            self.cache.pop(old, None)
            nxt = self.cur[c] + 1
            self.cur[c] = nxt if nxt < len(self.cands[c]) else -1

    def residual_metric(self, keys=None):
        """Mean residual^2 over the science image variance, in science units:
        comparable between the two directions."""
        keys = keys or self.keys
        num = den = 0.0
        ksum = self.theta[0]
        for k in keys:
            s = self.cache[k]
            a = self._local_alpha(s)
            model = s["X"] @ a
            res = s["Y"] - model
            if self.conv.name == "image":
                res = res / ksum
                vi = s["VCc"]
            else:
                vi = s["VS"]
            num += float(np.sum(res * res))
            den += float(np.sum(vi))
        return num / den if den > 0 else np.inf


# ---- applying the kernel -------------------------------------------------------------------

def _apply_region(kernel: SpatialKernel, k: int, conv: _Side, targ: _Side, outs, opts, nthreads,
                  want_conv, cancel=None):
    reg = kernel.regions[k]
    r = kernel.r
    ny, nx = kernel.shape
    tiles, fshape = _tile_plan(reg.good, r)
    # Tiles run in parallel threads with one FFT thread each: on a busy machine
    # multi-threaded FFTW costs 2-4x the CPU of single-threaded transforms.
    workers = min(_WORKERS, _fft.resolve_threads(nthreads), len(tiles))
    if workers > 1:
        nthreads = 1
    FK = [_fft.rfft2(_fft.kernel_to_origin(q, fshape), nthreads) for q in kernel.poly_kernels(k)]
    terms = poly_terms(kernel.ko)
    bgterms = poly_terms(kernel.bgo)
    bgc = reg.coeffs[kernel.ncoeff - kernel.nbg:]
    # The noise of the convolved image is var (x) K_ref^2 with the kernel at the
    # region centre, scaled by the local sum of K^2 (exact on smooth sky), and
    # the bad-pixel spread uses |K_ref|.
    gx0, gx1, gy0, gy1 = reg.good
    xc, yc = 0.5 * (gx0 + gx1), 0.5 * (gy0 + gy1)
    kref = np.tensordot(kernel.amplitudes(xc, yc, k), kernel.basis.images, axes=(0, 0))
    ref2 = float(np.sum(kref * kref))
    FK2 = _fft.rfft2(_fft.kernel_to_origin(kref * kref, fshape), nthreads)
    aKn = np.abs(kref) / np.abs(kref).sum()
    FKA = _fft.rfft2(_fft.kernel_to_origin(aKn, fshape), nthreads)
    ksum = reg.coeffs[0]
    norm = kernel.normalizes(k)
    kfm = float(opts["kfm"])
    fill, fill_noise = float(opts["fi"]), float(opts["fin"])
    blank = float(opts.get("mous", 1.0)) >= 0
    diff, noise, convd, omask = outs
    conv_is_template = reg.convolved == "TEMPLATE"

    def tile(t):
        check_cancel(cancel)
        ty0, ty1, tx0, tx1 = t
        hy, hx = ty1 - ty0, tx1 - tx0
        sl = (slice(ty0, ty1), slice(tx0, tx1))
        cs = (slice(r, r + hy), slice(r, r + hx))
        F = _fft.rfft2(_window(conv.data, ty0, ty1, tx0, tx1, r, fshape,
                               fill=None if conv.all_finite else conv.fill), nthreads)
        xs, ys = np.arange(tx0, tx1), np.arange(ty0, ty1)
        xn, yn = reg.norm_xy(xs, ys)
        model = None
        for (i, j), fk in zip(terms, FK):
            c = _fft.irfft2(F * fk, fshape, nthreads)[cs]
            if j:
                c *= (yn ** j)[:, None]
            if i:
                c *= (xn ** i)[None, :]
            if model is None:
                model = np.ascontiguousarray(c)
            else:
                model += c
        del F, c
        # Background: sum_ij c_ij x^i y^j = sum_i x^i (sum_j c_ij y^j), an outer product sum.
        for i in range(kernel.bgo + 1):
            col = sum(cb * yn ** jj for (ii, jj), cb in zip(bgterms, bgc) if ii == i)
            model += np.multiply.outer(col, xn ** i)
        vwin = _var_window(conv, ty0, ty1, tx0, tx1, r, fshape)
        cvar = _fft.irfft2(_fft.rfft2(vwin, nthreads) * FK2, fshape, nthreads)[cs]
        del vwin
        if kernel.ko > 0:
            cvar *= _ksq_ratio(kernel, k, xs, ys, ref2)
        np.maximum(cvar, 0.0, out=cvar)
        tdata = targ.values(sl)
        d = tdata - model if conv_is_template else model - tdata
        v = targ.var(sl, values=tdata)
        v += cvar
        del cvar
        # Bad output: unconvolved-image bad pixels, convolved-image bad pixels
        # holding more than (1 - kfm) of sum|K|, and the r-wide image border.
        bad = targ.bad[sl].copy()
        ya, xa = max(0, ty0 - r), max(0, tx0 - r)
        by, bx = np.nonzero(conv.bad[ya:ty1 + r, xa:tx1 + r])
        if by.size:
            # Share of sum|K| coming from bad convolved-image pixels.
            by, bx = by + (ya - ty0), bx + (xa - tx0)  # tile coordinates
            if by.size < _SPARSE_BAD * hy * hx:
                # Few bad pixels: add their |K| footprints directly (index = tile + 2r).
                frac = np.zeros((hy + 4 * r, hx + 4 * r))
                for yb, xb in zip(by + r, bx + r):
                    frac[yb:yb + 2 * r + 1, xb:xb + 2 * r + 1] += aKn
                frac = frac[2 * r:2 * r + hy, 2 * r:2 * r + hx]
            else:
                bwin = _window(conv.bad, ty0, ty1, tx0, tx1, r, fshape, fill=None)
                frac = _fft.irfft2(_fft.rfft2(bwin, nthreads) * FKA, fshape, nthreads)[cs]
            bad |= frac > (1.0 - kfm) + 1e-9
        bad[:, :max(0, r - tx0)] = True
        bad[:max(0, r - ty0), :] = True
        if tx1 > nx - r:
            bad[:, max(0, (nx - r) - tx0):] = True
        if ty1 > ny - r:
            bad[max(0, (ny - r) - ty0):, :] = True
        sd = np.sqrt(v, out=v)
        if norm:
            d /= ksum
            sd /= ksum
            model /= ksum
        # Statistics of the good pixels, for the header (HOTPANTS's X2NRM, DSIG...).
        good = ~bad
        gd = np.where(good, d, 0.0).ravel()
        q = np.divide(gd, sd.ravel(), out=np.zeros_like(gd), where=good.ravel() & (sd.ravel() > 0))
        part = np.array([np.count_nonzero(good), gd.sum(), np.dot(gd, gd),
                         np.sum(sd, where=good), np.count_nonzero(q), np.dot(q, q)])
        del gd, q
        if blank:
            d[bad] = fill
            sd[bad] = fill_noise
        diff[sl] = d
        noise[sl] = sd
        omask[sl] = bad
        if want_conv:
            convd[sl] = model
        with lock:
            sums[:] += part

    sums = np.zeros(6)
    lock = threading.Lock()
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(tile, tiles))
    else:
        for t in tiles:
            tile(t)
    n, sd_, sdd, sn, npos, sx2 = sums
    reg.stats.update(ngood=int(n), dmean=sd_ / n if n else 0.0,
                     dsige=math.sqrt(max(sdd / n - (sd_ / n) ** 2, 0.0)) if n else 0.0,
                     dsig=sn / n if n else 0.0, nx2nrm=int(npos),
                     x2nrm=sx2 / npos if npos else float("nan"))


def _var_window(side: _Side, ty0, ty1, tx0, tx1, r, fshape):
    ny, nx = side.data.shape
    ya, yb = max(0, ty0 - r), min(ny, ty1 + r)
    xa, xb = max(0, tx0 - r), min(nx, tx1 + r)
    v = side.var((slice(ya, yb), slice(xa, xb)))
    if side.sigma is not None:
        v = np.where(np.isfinite(v), v, 0.0)
    buf = np.zeros(fshape)
    oy, ox = ya - (ty0 - r), xa - (tx0 - r)
    buf[oy:oy + v.shape[0], ox:ox + v.shape[1]] = v
    return buf


def _ksq_ratio(kernel, k, xs, ys, ref, step=32):
    """sum K(x, y)^2 / ref on the tile grid, bilinear from nodes every ``step`` px."""
    gx = np.unique(np.r_[xs[::step], xs[-1]]).astype(float)
    gy = np.unique(np.r_[ys[::step], ys[-1]]).astype(float)
    XX, YY = np.meshgrid(gx, gy)
    s2 = kernel.sum_sq(XX, YY, k) / ref
    return _lerp_matrix(ys, gy) @ s2 @ _lerp_matrix(xs, gx).T


def _lerp_matrix(t, grid):
    """Matrix W (len(t), len(grid)) of linear interpolation weights."""
    W = np.zeros((len(t), len(grid)))
    if len(grid) == 1:
        W[:, 0] = 1.0
        return W
    i = np.clip(np.searchsorted(grid, t, side="right") - 1, 0, len(grid) - 2)
    w = (t - grid[i]) / (grid[i + 1] - grid[i])
    rows = np.arange(len(t))
    W[rows, i] = 1 - w
    W[rows, i + 1] = w
    return W


# ---- BLAS threads ---------------------------------------------------------------------------

# ---- the whole subtraction -----------------------------------------------------------------

@dataclass
class NativeResult:
    """Outputs of :func:`subtract`.

    ``diff``, ``convolved`` and ``noise`` follow HOTPANTS: bad output pixels
    hold the fill values ``fi`` / ``fin``; ``mask`` marks them (True = bad).
    """

    diff: np.ndarray
    convolved: Optional[np.ndarray]
    noise: np.ndarray
    mask: np.ndarray
    kernel: SpatialKernel
    header: object
    stamps: list


def subtract(image, template, *, mask=None, template_mask=None, err=None, template_err=None,
             options=None, stamp_xy=None, want_convolved=True, verbose=False, cancel=None,
             nthreads=0) -> NativeResult:
    """Subtract ``template`` from ``image`` with the Alard-Lupton method.

    Parameters
    ----------
    image, template : ndarray
        Aligned images of one shape.
    mask, template_mask : ndarray of bool, optional
        True = bad pixel. Non-finite pixels are always bad.
    err, template_err : ndarray, optional
        Noise (sigma) maps; without them the variance is HOTPANTS's model
        ``|data|/gain + (rdnoise/gain)^2`` from the ig/ir, tg/tr options.
    options : dict, optional
        HOTPANTS options by name (r, rss, ng, ko, bgo, nsx, nsy, nss, ft,
        sft, nft, ks, ssig, c, n, nrx, nry, il, iu, iuk, tl, tu, tuk, ig,
        ir, tg, tr, ip, tp, kfm, fi, fin, mous, afssc); missing ones take
        the executable's defaults.
    stamp_xy : ndarray (n, 2), optional
        0-based substamp centres to try first (HOTPANTS's -ssf).
    want_convolved : bool
        Also return the convolved image.
    verbose : bool or callable
    cancel : callable, optional
        Returns True to stop; raises :class:`~diffgui.engine.errors.Cancelled`.
    nthreads : int
        Threads (0: all cores, at most 2 tile workers).

    Returns
    -------
    NativeResult

    Raises
    ------
    FitError
        No usable stamps in a region (no stars, or everything flagged).
    """
    log = make_logger(verbose)
    opts = _resolve_options(options)
    defaults = _hotpants_defaults()
    ignored = [k for k in NATIVE_IGNORED if k != "v" and opts.get(k) != defaults.get(k)]
    if ignored:
        log(f"native backend: ignoring option(s) {', '.join(ignored)}")
    img = as_image(image, "image")
    tmpl = as_image(template, "template")
    if img.shape != tmpl.shape:
        raise InputError(f"image and template shapes differ: {img.shape} and {tmpl.shape}")
    shape = img.shape
    m_i = as_mask(mask, shape, "mask")
    m_t = as_mask(template_mask, shape, "template_mask")
    r, rss = int(opts["r"]), int(opts["rss"])
    if min(shape) < 2 * (rss + r) + 3:
        raise InputError(f"image {shape} is too small for r={r} and rss={rss}: "
                         f"needs at least {2 * (rss + r) + 3} pixels per side.")
    sideI = _Side("image", img, m_i, None if err is None else as_image(err, "err"),
                  opts["ig"], opts["ir"], opts["il"], opts["iu"], opts["iuk"], opts["ip"])
    sideT = _Side("template", tmpl, m_t,
                  None if template_err is None else as_image(template_err, "template_err"),
                  opts["tg"], opts["tr"], opts["tl"], opts["tu"], opts["tuk"], opts["tp"])
    for s in (sideI, sideT):
        frac = s.bad.mean()
        if frac > 0.5:
            log(f"WARNING: {100 * frac:.0f}% of the {s.name} pixels are flagged "
                f"(masked, non-finite or outside {s.name[0]}l={s.lower:g} .. {s.name[0]}u={s.upper:g})")
    basis = Basis(r, opts["ng"])
    design = _StampDesign(basis, rss)
    ko, bgo = int(opts["ko"]), int(opts["bgo"])
    direction = str(opts["c"]).lower()
    if stamp_xy is not None:
        stamp_xy = np.asarray(stamp_xy, dtype=float).reshape(-1, 2)
    regions_def = hotpants_regions(shape, int(opts["nrx"]), int(opts["nry"]),
                                   int(opts["nsx"]), int(opts["nsy"]), r, rss)
    log(f"native Alard-Lupton: {shape[1]}x{shape[0]}, r={r}, rss={rss}, ng={basis.ng()}, "
        f"{basis.n} basis functions, ko={ko}, bgo={bgo}, {len(regions_def)} region(s)")
    with single_thread_blas():
        regions, stamps_used = _fit_regions(regions_def, sideI, sideT, basis, design, opts,
                                            stamp_xy, log, cancel)
    kernel = SpatialKernel(basis, ko, bgo, regions, shape, photnorm=str(opts["n"]))
    check_cancel(cancel)
    diff = np.empty(shape)
    noise = np.empty(shape)
    convd = np.empty(shape) if want_convolved else None
    omask = np.zeros(shape, bool)
    for k, reg in enumerate(regions):
        check_cancel(cancel)
        conv, targ = (sideT, sideI) if reg.convolved == "TEMPLATE" else (sideI, sideT)
        _apply_region(kernel, k, conv, targ, (diff, noise, convd, omask), opts,
                      nthreads, want_convolved, cancel)
    header = _native_header(kernel, opts)
    for k, reg in enumerate(regions):
        log(f"region {k}: convolved {reg.convolved}, kernel sum {reg.coeffs[0]:.4f}, "
            f"{reg.stats['nstamps']} stamps, X2NRM {reg.stats.get('x2nrm', float('nan')):.3f}")
    return NativeResult(diff, convd, noise, omask, kernel, header, stamps_used)


def _fit_regions(regions_def, sideI, sideT, basis, design, opts, stamp_xy, log, cancel):
    """Stamps, fit and direction choice for every region."""
    regions, stamps_used = [], []
    for k, (good, frame) in enumerate(regions_def):
        check_cancel(cancel)
        ft = float(opts["ft"])
        direction = str(opts["c"]).lower()
        detect = {"t": (sideT,), "i": (sideI,)}.get(direction, (sideT, sideI))
        cands = _find_candidates((sideT, sideI), (good, frame), opts, ft, stamp_xy, log, detect)
        ncells = len(cands)
        frac = sum(1 for c in cands if c) / max(ncells, 1)
        if frac < float(opts["nft"]) and float(opts["sft"]) < 1:
            ft *= float(opts["sft"])
            log(f"region {k}: only {100 * frac:.0f}% of the stamps have a star above "
                f"{opts['ft']} sigma; lowering the threshold to {ft:.2f} sigma")
            cands = _find_candidates((sideT, sideI), (good, frame), opts, ft, stamp_xy, log,
                                     detect)
        nfound = sum(1 for c in cands if c)
        if nfound == 0:
            raise FitError(_no_stamp_reason(k, sideI, sideT, ft, opts))
        log(f"region {k} [{good[0]}:{good[1]},{good[2]}:{good[3]}]: {nfound} of {ncells} "
            f"stamps have candidates ({sum(len(c) for c in cands)} substamps)")
        dirs = {"t": ["t"], "i": ["i"]}.get(direction, ["t", "i"])
        fits = {}
        for d in dirs:
            check_cancel(cancel)
            conv, targ = (sideT, sideI) if d == "t" else (sideI, sideT)
            fit = _DirectionFit(conv, targ, cands, frame, basis, design, opts, log, cancel).run()
            if fit is not None:
                fits[d] = fit
                log(f"  convolving {conv.name.upper()}: {len(fit.keys)} stamps, "
                    f"kernel sum {fit.theta[0]:.4f}, mean chi2/pixel {np.mean(fit.merit):.3f}")
        if not fits:
            raise FitError(f"region {k}: every stamp was rejected by the fit; "
                           "try more stamps (nsx/nsy), a lower ft, or larger r/rss.")
        if len(fits) == 2:
            common = sorted(set(fits["t"].keys) & set(fits["i"].keys))
            use = common if len(common) >= 3 else None
            mt = fits["t"].residual_metric(use)
            mi = fits["i"].residual_metric(use)
            best = "t" if mt <= mi else "i"
            log(f"  direction: residual/noise^2 {mt:.3f} convolving TEMPLATE, {mi:.3f} "
                f"convolving IMAGE -> {'TEMPLATE' if best == 't' else 'IMAGE'}")
        else:
            best = next(iter(fits))
        fit = fits[best]
        xy = np.array([fit.cache[kk]["xy"] for kk in fit.keys])
        mu, sd = _clipped_stats(fit.merit, float(opts["ssig"]))
        stats = {"nstamps": len(fit.keys), "sssig": mu, "ssscat": sd}
        regions.append(KernelRegion(good, frame, fit.theta,
                                    "TEMPLATE" if best == "t" else "IMAGE", stats))
        stamps_used.append(xy)
    return regions, stamps_used


def _no_stamp_reason(k, sideI, sideT, ft, opts):
    parts = []
    for s in (sideT, sideI):
        frac = float(s.bad.mean())
        if frac > 0.2:
            low = float(np.mean(s.data[::3, ::3] <= s.lower))
            why = f"{100 * frac:.0f}% of the {s.name} pixels are flagged"
            if low > 0.2:
                why += (f" ({100 * low:.0f}% at or below the lower threshold "
                        f"{s.name[0]}l={s.lower:g}: background-subtracted data needs a "
                        "negative lower threshold)")
            parts.append(why)
    if not parts:
        parts.append(f"no star peaks above {ft:.1f} sigma in both images "
                     "(no stars, or the images do not overlap)")
    return (f"no usable kernel stamps in region {k}: " + "; ".join(parts) +
            ". Check the thresholds (il/tl, iu/tu), the masks, and ft.")


def _native_header(kernel, opts):
    from astropy.io import fits

    h = fits.Header()
    h["SOFTNAME"] = ("diffgui", "The software that differenced this image")
    h["SOFTVERS"] = ("native Alard-Lupton", "HOTPANTS algorithm in numpy")
    for key, val in kernel.region_keywords().items():
        h[key] = val
    for k, reg in enumerate(kernel.regions):
        st = reg.stats
        h[f"SSSIG{k:02d}"] = (f"{st.get('sssig', 0):.4f}", "Average Figure of Merit across Stamps")
        h[f"SSSCAT{k:02d}"] = (f"{st.get('ssscat', 0):.4f}", "Stdev in Figure of Merit")
        h[f"X2NRM{k:02d}"] = (f"{st.get('x2nrm', float('nan')):.4f}", "1/N * SUM (diff/noise)^2")
        h[f"NX2NRM{k:02d}"] = (f"{st.get('nx2nrm', 0)}", "Number of pixels in X2NRM")
        h[f"DMEAN{k:02d}"] = (f"{st.get('dmean', 0):.4f}", "Mean of diff image; good pixels")
        h[f"DSIGE{k:02d}"] = (f"{st.get('dsige', 0):.4f}", "Stdev of diff image; good pixels")
        h[f"DSIG{k:02d}"] = (f"{st.get('dsig', 0):.4f}", "Mean of noise image; good pixels")
        h[f"NSTAMP{k:02d}"] = (int(st.get("nstamps", 0)), "Stamps used in the fit")
    h["PHOTNORM"] = (kernel.photnorm, "Direction of photometric normalization")
    h["NREGION"] = (len(kernel.regions), "Number of independent regions")
    h["MASKVAL"] = (float(opts["fi"]), "Value of Masked Pixels")
    h["NSTAMPS"] = (int(sum(reg.stats.get("nstamps", 0) for reg in kernel.regions)),
                    "Stamps used in the fit")
    th = kernel.to_table_hdu().header
    for key in ["NGAUSS"] + [k for k in th if k.startswith(("DGAUSS", "SGAUSS"))] + \
            ["FWKERN", "CKORDER", "BGORDER"]:
        h[key] = (th[key], th.comments[key])
    return h
