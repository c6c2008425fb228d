"""Input validation: every bad input gets a clear InputError, safe conversions are silent."""

import numpy as np
import pytest

from diffgui.engine.errors import (Cancelled, InputError, as_image, as_mask, as_noise,
                                   check_cancel, make_logger, validate_pair)


def test_big_endian_and_integer_inputs_are_converted():
    a = np.arange(64, dtype=">f4").reshape(8, 8)
    out = as_image(a)
    assert out.dtype == np.float64 and out.dtype.isnative
    assert np.array_equal(out, np.arange(64).reshape(8, 8))
    i = np.arange(64, dtype=">i2").reshape(8, 8)
    assert as_image(i).dtype == np.float64
    u = np.arange(64, dtype=np.uint16).reshape(8, 8)
    assert as_image(u)[7, 7] == 63


def test_non_contiguous_view_is_copied():
    a = np.random.default_rng(0).normal(size=(20, 30))[::2, ::3]
    out = as_image(a)
    assert out.flags.c_contiguous and np.array_equal(out, a)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((2, 8, 8)), "must be 2-D"),
    (np.zeros(10), "must be 2-D"),
    (np.zeros((0, 5)), "empty"),
    (np.full((8, 8), np.nan), "no finite pixels"),
    (np.array([["a", "b"], ["c", "d"]]), "not numbers"),
    (None, "missing"),
    (np.ones((4, 4), dtype=complex), "complex"),
])
def test_bad_images_are_refused_with_a_clear_message(bad, words):
    with pytest.raises(InputError, match=words):
        as_image(bad, "image")


def test_invalid_is_a_value_error():
    with pytest.raises(ValueError):
        as_image(np.zeros((3, 3, 3)))


def test_validate_pair_shapes_masks_and_noise():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(32, 32))
    b = rng.normal(size=(32, 32))
    with pytest.raises(InputError, match="same shape"):
        validate_pair(a, b[:, :31])
    a2 = a.copy()
    a2[3, 4] = np.nan
    vp = validate_pair(a2, b)
    assert vp.mask[3, 4] and vp.mask.sum() == 1 and not vp.template_mask.any()
    with pytest.raises(InputError, match="every pixel of the science image is masked"):
        validate_pair(a, b, mask=np.ones_like(a, bool))
    with pytest.raises(InputError, match="every pixel of the template is masked"):
        validate_pair(a, b, template_mask=np.ones_like(a, bool))
    half = np.zeros_like(a, bool)
    half[:16] = True
    with pytest.raises(InputError, match="no pixel is usable in both"):
        validate_pair(a, b, mask=half, template_mask=~half)
    with pytest.raises(InputError, match="mask.*shape"):
        validate_pair(a, b, mask=np.zeros((31, 32), bool))
    err = np.ones_like(a)
    vp = validate_pair(a, b, err=err, template_err=True)
    assert vp.template_err is True and vp.err is not None
    with pytest.raises(InputError, match="not a noise map"):
        validate_pair(a, b, err=np.zeros_like(a))


def test_integer_mask_and_noise_copy_semantics():
    m = as_mask(np.array([[0, 128], [1, 0]], dtype=np.uint16), (2, 2))
    assert m.dtype == bool and m.tolist() == [[False, True], [True, False]]
    err = np.ones((4, 4), dtype=">f4")
    out = as_noise(err, (4, 4))
    assert out.dtype.isnative


def test_logger_and_cancel():
    got = []
    log = make_logger(got.append)
    log("a", 1)
    assert got == ["a 1"]
    make_logger(False)("silent")
    check_cancel(None)
    check_cancel(lambda: False)
    with pytest.raises(Cancelled):
        check_cancel(lambda: True)
