"""The public subtraction API: ``run_hotpants``, ``run_zogy`` and ``run_sfft``.

Same parameter names, defaults and return conventions as
``stdpipe.subtraction``, so switching is a change of one import::

    from diffgui.engine.subtraction import run_zogy

Each function only orchestrates (validation, noise maps, objects, outputs);
the algorithms live in their own modules, imported inside the functions so
that importing this module stays cheap.
"""

from __future__ import annotations

__all__ = ["run_hotpants", "run_zogy", "run_sfft"]


# ---- run_hotpants (owner: HOTPANTS) ---------------------------------------------------
def run_hotpants(image, template, mask=None, template_mask=None, err=None, template_err=None,
                 extra=None, image_fwhm=None, template_fwhm=None, image_gain=None,
                 template_gain=1000, rel_r=3, rel_rss=4, nx=1, ny=None, obj=None,
                 get_convolved=False, get_scaled=False, get_noise=False, get_kernel=False,
                 get_header=False, _tmpdir=None, _workdir=None, _exe=None, verbose=False,
                 *, backend="auto", cancel=None):
    raise NotImplementedError("run_hotpants is not implemented yet")
# ---- end run_hotpants ------------------------------------------------------------------


# ---- run_zogy (owner: ZOGY) -------------------------------------------------------------
def run_zogy(image, template, mask=None, template_mask=None, err=None, template_err=None,
             image_psf=None, template_psf=None, image_gain=None, template_gain=None,
             image_fwhm=None, template_fwhm=None, scale=None, psf_clean=0, dx=0.25, dy=0.25,
             nx=1, ny=None, overlap=50, fit_scale=True, fit_shift=True, good_regions=None,
             image_obj=None, template_obj=None, get_psf=False, get_Fpsf=False, nthreads=0,
             verbose=False, *, cancel=None, **kwargs):
    raise NotImplementedError("run_zogy is not implemented yet")
# ---- end run_zogy ----------------------------------------------------------------------


# ---- run_sfft (owner: SFFT) --------------------------------------------------------------
def run_sfft(image, template, mask=None, template_mask=None, err=None, template_err=None,
             image_gain=None, template_gain=None, kernel_shape=(7, 7), kernel_poly_order=2,
             bg_poly_order=2, flux_poly_order=1, flux_penalty=1000.0, ridge=1e-06,
             sigma_clip=3.0, max_iter=5, obj=None, obj_size=None, get_convolved=False,
             get_scaled=False, get_noise=False, get_kernel=False, verbose=False,
             *, cancel=None):
    raise NotImplementedError("run_sfft is not implemented yet")
# ---- end run_sfft ------------------------------------------------------------------------
