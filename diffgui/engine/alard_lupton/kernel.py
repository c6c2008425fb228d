"""The spatially varying kernel (:class:`SpatialKernel`): evaluation anywhere,
convolution of a whole image, HOTPANTS kernel tables (:mod:`.kernel_table`)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from diffgui.engine.alard_lupton.basis import Basis
from diffgui.engine.alard_lupton.convolution import _convolve_region_fft
from diffgui.engine.alard_lupton.regions import _poly_values
from diffgui.engine.errors import InputError, as_image


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

    # -- HOTPANTS kernel table (functions in diffgui.engine.alard_lupton.kernel_table)
    def to_table_hdu(self):
        """The kernel as HOTPANTS's "Convolution Kernel Information" table."""
        from diffgui.engine.alard_lupton.kernel_table import kernel_to_table_hdu

        return kernel_to_table_hdu(self)

    def region_keywords(self) -> dict:
        """REGIONnn / CONVOLnn / KSUMnn header values (strings, as HOTPANTS writes)."""
        from diffgui.engine.alard_lupton.kernel_table import region_keywords

        return region_keywords(self)

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
        from diffgui.engine.alard_lupton.kernel_table import kernel_from_table

        return kernel_from_table(cls, data, table_header, header, shape, nsx=nsx, nsy=nsy,
                                 nrx=nrx, nry=nry, rss=rss)
