"""The fitted SFFT model (:class:`SFFTResult`) and stdpipe 0.4.1's module-level
evaluation helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from diffgui.engine.sfft.assembly import poly_map
from diffgui.engine.sfft.basis import normalise, poly_exponents, poly_values


@dataclass
class SFFTResult:
    """Fitted SFFT kernel, background and fit metadata.

    Attributes
    ----------
    kernel_coeffs : ndarray (ky*kx, n_kpoly)
        Polynomial coefficients of every kernel pixel (row-major offsets).
    bg_coeffs : ndarray (n_bg,)
        Background polynomial coefficients.
    flux_poly_coeffs : ndarray
        Kernel sum (flux scale) polynomial coefficients of the terms of degree
        <= flux_poly_order (higher ones are ~0 through the penalty).
    kernel_shape, kernel_poly_order, bg_poly_order, flux_poly_order, image_shape
        The model.
    n_iter : int
        Number of solves (the first fit, the reweighting pass, the clipping passes).
    n_good : int
        Pixels used in the final fit.
    n_clipped : int
        Pixels removed by sigma clipping.
    chi2 : float
        Weighted sum of squared residuals over the fitted pixels.
    rms : float
        Plain RMS of the residuals over the fitted pixels.
    time : float
        Wall time of the fit, seconds.
    mode : str
        'fft' (FFT assembly with exact corrections) or 'direct'.
    rcond : float
        Reciprocal condition number of the (equilibrated) final system.
    dmask : ndarray of bool
        Pixels excluded because of the edge band or grown template defects.
    fit_mask : ndarray of bool
        Pixels used in the final fit (True = used).
    diff, convolved : ndarray or None
        Difference ``image - model`` and the convolved template ``K * R``.
    """

    kernel_coeffs: np.ndarray
    bg_coeffs: np.ndarray
    flux_poly_coeffs: np.ndarray
    kernel_shape: tuple
    kernel_poly_order: int
    bg_poly_order: int
    flux_poly_order: int
    image_shape: tuple
    n_iter: int = 0
    n_good: int = 0
    n_clipped: int = 0
    chi2: float = float("nan")
    rms: float = float("nan")
    time: float = 0.0
    mode: str = "fft"
    rcond: float = float("nan")
    dmask: Optional[np.ndarray] = field(default=None, repr=False)
    fit_mask: Optional[np.ndarray] = field(default=None, repr=False)
    diff: Optional[np.ndarray] = field(default=None, repr=False)
    convolved: Optional[np.ndarray] = field(default=None, repr=False)
    params: dict = field(default_factory=dict)

    # -- basis helpers -------------------------------------------------------------
    @property
    def kernel_exponents(self):
        return poly_exponents(self.kernel_poly_order)

    @property
    def bg_exponents(self):
        return poly_exponents(self.bg_poly_order)

    @property
    def kernel_sum_coeffs(self) -> np.ndarray:
        """Coefficients of the exact kernel sum polynomial (all kernel terms)."""
        return self.kernel_coeffs.sum(axis=0)

    def _coords(self, x, y, image_shape):
        ny, nx = self.image_shape if image_shape is None else image_shape
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        x, y = np.broadcast_arrays(x, y)
        return normalise(x.ravel(), nx), normalise(y.ravel(), ny), x.shape

    # -- evaluation --------------------------------------------------------------------
    def evaluate_kernel_at(self, x, y, image_shape=None) -> np.ndarray:
        """The convolution kernel at pixel (x, y), shape ``kernel_shape``.

        ``K[hy + dy, hx + dx]`` multiplies ``R(y - dy, x - dx)``: convolving the
        template with K gives the model (without background) at that position.
        """
        xt, yt, _ = self._coords(float(x), float(y), image_shape)
        P = poly_values(self.kernel_exponents, xt, yt)[0]
        return (self.kernel_coeffs @ P).reshape(self.kernel_shape)

    def kernel_grid(self, nx=5, ny=None):
        """Kernels on a regular ``ny x nx`` grid of cell centres.

        Returns
        -------
        xs, ys : ndarray
            Pixel coordinates of the grid columns and rows.
        kernels : ndarray (ny, nx, ky, kx)
        """
        ny = nx if ny is None else ny
        H, W = self.image_shape
        xs = (np.arange(nx) + 0.5) * W / nx - 0.5
        ys = (np.arange(ny) + 0.5) * H / ny - 0.5
        gx, gy = np.meshgrid(xs, ys)
        P = poly_values(self.kernel_exponents, normalise(gx.ravel(), W), normalise(gy.ravel(), H))
        k = (P @ self.kernel_coeffs.T).reshape((ny, nx) + tuple(self.kernel_shape))
        return xs, ys, k

    def kernel_mosaic(self, nx=5, ny=None, gap=1, fill=np.nan) -> np.ndarray:
        """The kernel grid tiled into one 2-D image for display (``gap`` px between kernels)."""
        _, _, k = self.kernel_grid(nx, ny)
        gy, gx, ky, kx = k.shape
        out = np.full((gy * (ky + gap) - gap, gx * (kx + gap) - gap), fill)
        for i in range(gy):
            for j in range(gx):
                out[i * (ky + gap):i * (ky + gap) + ky, j * (kx + gap):j * (kx + gap) + kx] = k[i, j]
        return out

    def _poly_at(self, exponents, coeffs, x, y, image_shape):
        xt, yt, shape = self._coords(x, y, image_shape)
        v = poly_values(exponents, xt, yt) @ coeffs
        return float(v[0]) if shape == () else v.reshape(shape)

    def _poly_everywhere(self, exponents, coeffs, image_shape):
        return poly_map(coeffs, exponents, self.image_shape if image_shape is None else image_shape)

    def evaluate_flux_scale(self, x, y, image_shape=None):
        """Kernel sum (template-to-science flux scale) at (x, y); scalar or array."""
        return self._poly_at(self.kernel_exponents, self.kernel_sum_coeffs, x, y, image_shape)

    def flux_scale_map(self, image_shape=None) -> np.ndarray:
        """Kernel sum at every pixel."""
        return self._poly_everywhere(self.kernel_exponents, self.kernel_sum_coeffs, image_shape)

    def evaluate_background(self, x, y, image_shape=None):
        """Differential background at (x, y); scalar or array."""
        return self._poly_at(self.bg_exponents, self.bg_coeffs, x, y, image_shape)

    def background_map(self, image_shape=None) -> np.ndarray:
        """Differential background at every pixel."""
        return self._poly_everywhere(self.bg_exponents, self.bg_coeffs, image_shape)

    @property
    def model(self):
        """Full model ``K * R + B`` (None when the images were not kept)."""
        if self.convolved is None:
            return None
        return self.convolved + self.background_map()

    def summary(self) -> str:
        """One line describing the fit."""
        ny, nx = self.image_shape
        fs = self.evaluate_flux_scale(np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2]),
                                      np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2]))
        return (f"SFFT {self.mode}: {self.n_iter} solves, {self.n_good} px "
                f"({self.n_clipped} clipped), rms {self.rms:.4g}, chi2/px "
                f"{self.chi2 / max(self.n_good, 1):.4g}, flux scale {fs[-1]:.5g} "
                f"[{fs.min():.5g}..{fs.max():.5g}], {self.time:.2f} s")



# ----------------------------------------------------------------------------------------
# stdpipe 0.4.1 compatibility: module-level evaluation helpers
def evaluate_kernel_at(result: SFFTResult, x, y, image_shape=None):
    """Same as :meth:`SFFTResult.evaluate_kernel_at` (stdpipe's module function)."""
    return result.evaluate_kernel_at(x, y, image_shape)


def evaluate_flux_scale(result: SFFTResult, x, y, image_shape=None):
    """Same as :meth:`SFFTResult.evaluate_flux_scale` (stdpipe's module function)."""
    return result.evaluate_flux_scale(x, y, image_shape)


def evaluate_background(result: SFFTResult, x, y, image_shape=None):
    """Same as :meth:`SFFTResult.evaluate_background` (stdpipe's module function)."""
    return result.evaluate_background(x, y, image_shape)
