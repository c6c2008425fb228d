"""FFT helpers: correctness against numpy/scipy and shift-free convolution for any parity."""

import numpy as np
import pytest
from scipy import signal

from diffgui.engine.common import fft


@pytest.mark.parametrize("shape", [(64, 64), (63, 65), (100, 37)])
def test_rfft_roundtrip_matches_numpy(shape):
    a = np.random.default_rng(0).normal(size=shape)
    A = fft.rfft2(a, nthreads=2)
    assert np.allclose(A, np.fft.rfft2(a))
    assert np.allclose(fft.irfft2(A, shape), a)
    # Plans are reused: the second call gives the same numbers and the input is untouched.
    a0 = a.copy()
    assert np.allclose(fft.rfft2(a), A) and np.array_equal(a, a0)


def test_next_fast_size():
    for n in [1, 7, 97, 511, 1000, 1025, 4097]:
        m = fft.next_fast_size(n)
        assert m >= n
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        assert r == 1
    assert fft.next_fast_size(1024) == 1024


@pytest.mark.parametrize("shape", [(64, 64), (63, 63), (64, 63)])
def test_convolution_is_shift_free_for_any_parity(shape):
    img = np.zeros(shape)
    img[30, 31] = 1.0
    k = np.zeros((5, 5))
    k[2, 2] = 0.6
    k[2, 3] = 0.4  # asymmetric: a convolution moves flux to +x
    for mode in ("same", "wrap"):
        out = fft.fft_convolve(img, k, mode=mode)
        assert out[30, 31] == pytest.approx(0.6, abs=1e-12)
        assert out[30, 32] == pytest.approx(0.4, abs=1e-12)


def test_same_mode_matches_scipy():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(57, 80))
    k = rng.normal(size=(7, 9))
    assert np.allclose(fft.fft_convolve(img, k), signal.fftconvolve(img, k, mode="same"))


def test_kernel_to_origin_checks():
    with pytest.raises(ValueError, match="odd"):
        fft.kernel_to_origin(np.ones((4, 5)), (16, 16))
    with pytest.raises(ValueError, match="larger"):
        fft.kernel_to_origin(np.ones((21, 21)), (16, 16))
    k = fft.kernel_to_origin(np.arange(9.0).reshape(3, 3), (8, 8))
    assert k[0, 0] == 4 and k[-1, -1] == 0 and k[1, 1] == 8 and k.sum() == 36
