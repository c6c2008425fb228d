"""Fourier-space helpers of ZOGY: rfft weights, shift phases, mirror padding,
astrometric gradients, and the compact kernels of S and D on a small grid."""

from __future__ import annotations

import numpy as np

from diffgui.engine.common import fft
from diffgui.engine.zogy.noise_correlation import _whitening


def _rfft_weights(shape):
    """Multiplicity of each rfft column in the full spectrum (1 or 2)."""
    w = shape[1]
    wts = np.full(w // 2 + 1, 2.0)
    wts[0] = 1.0
    if w % 2 == 0:
        wts[-1] = 1.0
    return wts


def _freqs(shape):
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return fy, fx


def _shift_phase(shape, sx, sy):
    """Fourier factor that moves a template feature at (x + sx, y + sy) to (x, y)."""
    fy, fx = _freqs(shape)
    return np.exp(2j * np.pi * fy * sy) * np.exp(2j * np.pi * fx * sx)


def _pad(a, m, shape, fill_value=None):
    """Mirror ``a`` into a margin ``m`` and pad to ``shape`` (extra on the far side)."""
    h, w = a.shape
    ph, pw = shape
    if fill_value is not None:
        out = np.full(shape, fill_value, dtype=np.float64)
        out[m:m + h, m:m + w] = a
        return out
    out = np.pad(a, ((m, ph - h - m), (m, pw - w - m)), mode="symmetric")
    return out


def _gradients_sq(a, dx, dy, out, m):
    """Add ``dx**2 (d_x a)**2 + dy**2 (d_y a)**2`` over the interior ``out.shape`` of the
    padded ``a`` (offset ``m``, central differences; the margin gives the neighbours)."""
    h, w = out.shape
    g = a[m:m + h, m + 1:m + w + 1] - a[m:m + h, m - 1:m + w - 1]
    g *= 0.5 * dx
    np.square(g, out=g)
    out += g
    np.subtract(a[m + 1:m + h + 1, m:m + w], a[m - 1:m + h - 1, m:m + w], out=g)
    g *= 0.5 * dy
    np.square(g, out=g)
    out += g


class _SmallGrid:
    """ZOGY's kernels on a small FFT grid (they are compact: a few PSF sizes)."""

    def __init__(self, Pn, Pr, F, sig_n, sig_r, corr_n, corr_r, pshape, nt):
        n = 4 * max(Pn.shape + Pr.shape)
        self.shape = tuple(min(p, fft.next_fast_size(n)) for p in pshape)
        self.pshape = pshape
        self.nt = nt
        self.F = F
        pn = fft.rfft2(fft.kernel_to_origin(Pn, self.shape), nt)
        pr = fft.rfft2(fft.kernel_to_origin(Pr, self.shape), nt)
        for corr, ph in ((corr_n, pn), (corr_r, pr)):
            if corr is not None:
                ph *= _whitening(corr, self.shape)
        self.pn, self.pr = pn, pr
        self.an2, self.ar2 = np.abs(pn) ** 2, np.abs(pr) ** 2
        den2 = (sig_n * sig_n * F * F) * self.ar2 + (sig_r * sig_r) * self.an2
        tiny = np.finfo(float).tiny
        self.g2 = np.where(den2 > tiny, 1.0 / np.maximum(den2, tiny), 0.0)

    def _real(self, k_h):
        return fft.irfft2(k_h, self.shape, self.nt)

    def s_kernels(self):
        F = self.F
        kn = self._real(np.conj(self.pn) * (self.ar2 * self.g2 * (F * F)))
        kr = self._real(np.conj(self.pr) * (self.an2 * self.g2 * F))
        return kn, kr

    def d_kernels(self, F_D):
        g = np.sqrt(self.g2)
        return self._real(self.pr * g * (self.F / F_D)), self._real(self.pn * g * (1.0 / F_D))


def _variance_map(terms, m, pshape, nt):
    """Sum over ``(var, sigma, kernel)`` of ``var (*) kernel**2``.

    Kernels are small-grid real kernels (origin at index 0). ``var`` is a
    callable returning the padded variance map, or None for the constant
    ``sigma**2`` (adds a scalar). Returns a scalar or a full-grid array.
    """
    scalar = 0.0
    acc = None
    for var, sigma, k in terms:
        if var is None:
            scalar += sigma * sigma * float(np.sum(k * k))
            continue
        kc = np.fft.fftshift(np.square(k))
        if kc.shape[0] % 2 == 0:
            kc = kc[1:]
        if kc.shape[1] % 2 == 0:
            kc = kc[:, 1:]
        K = fft.rfft2(fft.kernel_to_origin(kc, pshape), nt)
        V = fft.rfft2(var(), nt)
        V *= K
        del K
        if acc is None:
            acc = V
        else:
            acc += V
        del V
    if acc is None:
        return scalar
    out = fft.irfft2(acc, pshape, nt)
    if scalar:
        out += scalar
    return out
