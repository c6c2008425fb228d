"""The public subtraction API: ``run_hotpants``, ``run_zogy`` and ``run_sfft``.

Same parameter names, defaults and return conventions as
``stdpipe.subtraction``, so switching is a change of one import::

    from diffgui.engine.api import run_zogy

Each function only orchestrates (validation, noise maps, objects, outputs);
the algorithms live in their own modules, imported inside the functions so
that importing this module stays cheap.
"""

from __future__ import annotations

__all__ = ["run_hotpants", "run_zogy", "run_sfft"]


def _preflight(method, image, memory_limit, log, positive=(), non_negative=(), **params):
    """Scalar and memory checks before any work (:mod:`diffgui.engine.common.preflight`)."""
    from diffgui.engine.common.preflight import check_run_inputs

    check_run_inputs(method, image, memory_limit, log, positive, non_negative, **params)


def _mask_hot_pixels(pair, image_fwhm, template_fwhm, log):
    """Isolated hot pixels of both images added to the pair's masks (in place)."""
    from diffgui.engine.common.preflight import mask_hot_pixels

    return mask_hot_pixels(pair, image_fwhm, template_fwhm, log)


#: The ``err=True`` noise options that run_hotpants and run_sfft share (``{noise_options}``
#: in their docstrings).
_NOISE_OPTIONS_DOC = """\
    image_readnoise, template_readnoise : float, optional
        Read noise (electrons) of the noise maps built for ``err=True``.
    noise_model : {'poisson', 'stdpipe'}
        How ``err=True`` maps are built (:func:`diffgui.engine.common.noise.build_noise_map`):
        'poisson' (default) is the Poisson variance of each pixel's counts / gain plus
        the read noise, right in crowded fields; 'stdpipe' is stdpipe's background RMS
        in quadrature with a smoothed source term.
"""


def _with_noise_options(func):
    """Put :data:`_NOISE_OPTIONS_DOC` in place of ``{noise_options}`` in ``func``'s docstring."""
    if func.__doc__:
        func.__doc__ = func.__doc__.replace("    {noise_options}\n", _NOISE_OPTIONS_DOC)
    return func


# ---- run_hotpants (owner: HOTPANTS) ---------------------------------------------------
@_with_noise_options
def run_hotpants(image, template, mask=None, template_mask=None, err=None, template_err=None,
                 extra=None, image_fwhm=None, template_fwhm=None, image_gain=None,
                 template_gain=1000, rel_r=3, rel_rss=4, nx=1, ny=None, obj=None,
                 get_convolved=False, get_scaled=False, get_noise=False, get_kernel=False,
                 get_header=False, _tmpdir=None, _workdir=None, _exe=None, verbose=False,
                 *, backend="auto", cancel=None, image_readnoise=None,
                 template_readnoise=None, noise_model="poisson", memory_limit=None):
    """Subtract ``template`` from ``image`` with HOTPANTS (Alard-Lupton kernel fit).

    Same parameters and returns as ``stdpipe.subtraction.run_hotpants``.
    Options are chosen the way stdpipe does (thresholds from the data, gains,
    ``r``/``rss`` from the FWHM with ``rel_r``/``rel_rss``, the recommended
    ``ng`` basis from sigma_match, stamps at ``obj``, ``nx`` x ``ny``
    regions, ``n i``, ``ko 0``; but ``bgo 1``, as a sky gradient needs it); any
    HOTPANTS option in ``extra``
    overrides them (see :func:`diffgui.engine.params.hotpants_option_specs`).

    Parameters
    ----------
    image, template : ndarray
        Aligned science and template images of one shape.
    mask, template_mask : ndarray of bool, optional
        True = bad pixel; non-finite pixels are always masked.
    err, template_err : ndarray or bool, optional
        Noise (sigma) maps, or True to build them from the image and its gain
        (needed for background-subtracted data).
    extra : dict, optional
        HOTPANTS options by name, e.g. ``{'ko': 1, 'bgo': 1, 'nsx': 8}``.
    image_fwhm, template_fwhm : float, optional
        FWHMs in pixels (set r, rss, ng and the convolution direction).
    image_gain, template_gain : float, optional
        Gains in e-/ADU (template default 1000: nearly noiseless).
    rel_r, rel_rss : float
        r = ceil(rel_r * FWHM), rss = ceil(rel_rss * FWHM).
    nx, ny : int
        Regions with independent kernels (ny defaults to nx).
    obj : astropy Table, optional
        Objects (0-based x, y) where kernel stamps are tried first.
    get_convolved, get_scaled, get_noise, get_kernel, get_header : bool
        Also return the convolved image, diff/noise, the noise map, the
        kernel (:class:`~diffgui.engine.alard_lupton.SpatialKernel`,
        evaluable at any x, y) and the FITS header.
    _tmpdir, _workdir, _exe : str, optional
        Executable backend: folder for the temporary folder, folder kept
        with all files, path of the executable.
    verbose : bool or callable
        Log messages (HOTPANTS's output is streamed line by line).
    backend : {'auto', 'exe', 'native'}
        'exe': the HOTPANTS executable; 'native': the numpy implementation
        (inverse-variance weighted); 'auto': the executable when found.
    cancel : callable, optional
        Returns True to stop the run (the executable is killed).
    {noise_options}
    memory_limit : float or str, optional
        Refuse the run when its estimated peak memory is above this (bytes,
        ``'8G'``, ``'50%'``, ``'off'``); default ``$DIFFGUI_MEMORY_LIMIT`` or
        75 % of the available memory (:mod:`diffgui.engine.common.resources`).

    Returns
    -------
    ndarray or list
        The difference image alone, or ``[diff, convolved, scaled, noise,
        kernel, header]`` restricted to the requested outputs, in this order.
        Arrays are native float64; bad output pixels hold HOTPANTS's fill
        value (1e-30 in the difference, 0 in the noise).

    Raises
    ------
    InputError
        Bad images, masks, noise maps or options (e.g. rss < r), a gain or
        FWHM that is not a positive finite number, or a run that would need
        more memory than ``memory_limit``.
    ExecutableError
        Executable missing (backend='exe'), crashed, timed out, or found no
        stamps.
    FitError
        Native backend: no usable stamps (no stars, everything flagged).
    Cancelled
        ``cancel()`` returned True.
    """
    import numpy as np

    from diffgui.engine import hotpants as _hp
    from diffgui.engine.errors import (ExecutableError, InputError, check_cancel, make_logger,
                         validate_pair)
    from diffgui.engine.common.noise import resolve_noise
    from diffgui.engine.params import validate_hotpants_extra

    log = make_logger(verbose)
    _preflight("hotpants", image, memory_limit, log,
               positive=[("image_gain", image_gain), ("template_gain", template_gain),
                         ("image_fwhm", image_fwhm), ("template_fwhm", template_fwhm),
                         ("rel_r", rel_r), ("rel_rss", rel_rss)], nx=nx, ny=ny)
    backend = str(backend).lower()
    if backend not in ("auto", "exe", "native"):
        raise InputError(f"backend must be 'auto', 'exe' or 'native', got {backend!r}")
    extra = validate_hotpants_extra(extra) or {}
    pair = _mask_hot_pixels(validate_pair(image, template, mask, template_mask, err, template_err),
                            image_fwhm, template_fwhm, log)
    exe = None
    if backend != "native":
        try:
            exe = _hp.find_executable(_exe)
        except ExecutableError:
            if backend == "exe" or _exe:
                raise
            log("HOTPANTS executable not found: using the native Alard-Lupton backend")
    check_cancel(cancel)
    e_img = resolve_noise(pair.err, pair.image, gain=image_gain, mask=pair.mask, name="err",
                          read_noise=image_readnoise, model=noise_model, log=log)
    e_tmpl = resolve_noise(pair.template_err, pair.template, gain=template_gain,
                           mask=pair.template_mask, name="template_err",
                           read_noise=template_readnoise, model=noise_model, log=log)
    options = _hp.derive_options(
        pair.image, pair.template, pair.mask, pair.template_mask, image_fwhm=image_fwhm,
        template_fwhm=template_fwhm, image_gain=image_gain, template_gain=template_gain,
        rel_r=rel_r, rel_rss=rel_rss, nx=nx, ny=ny, extra=extra,
        image_noise=e_img is not None, template_noise=e_tmpl is not None, log=log)
    stamp_xy = _hp.stamps_from_obj(obj)
    check_cancel(cancel)
    if exe is None and stamp_xy is None and (options.get("ssf") or options.get("cmp")):
        name = "ssf" if options.get("ssf") else "cmp"
        stamp_xy = _hp.read_xy_file(options.pop(name), skip_first=name == "cmp")
    if exe is not None:
        out = _hp.run(pair.image, pair.template, mask=pair.mask, template_mask=pair.template_mask,
                      err=e_img, template_err=e_tmpl, options=options, stamp_xy=stamp_xy,
                      exe=exe, tmpdir=_tmpdir, workdir=_workdir, verbose=verbose, cancel=cancel,
                      timeout=_hp.DEFAULT_TIMEOUT)
    else:
        from diffgui.engine import alard_lupton as _al

        res = _al.subtract(pair.image, pair.template, mask=pair.mask,
                           template_mask=pair.template_mask, err=e_img, template_err=e_tmpl,
                           options=options, stamp_xy=stamp_xy, want_convolved=get_convolved,
                           verbose=verbose, cancel=cancel)
        out = _hp.HotpantsOutputs(diff=res.diff, header=res.header, convolved=res.convolved,
                                  noise=res.noise, mask=res.mask, kernel=res.kernel,
                                  stamps=np.concatenate(res.stamps) if res.stamps else None)
    if not options.get("bgo") and out.noise is not None:
        grad = _hp.residual_gradient(out.diff, out.noise, out.mask)
        if grad > 0.3:
            log(f"WARNING: the difference keeps a background gradient of {grad:.2f} sigma "
                "across the image; use extra={'bgo': 1} (or more regions nx, ny)")
    want = [get_convolved, get_scaled, get_noise, get_kernel, get_header]
    if not any(want):
        return out.diff
    result = [out.diff]
    if get_convolved:
        result.append(out.convolved)
    if get_scaled:
        scaled = np.zeros_like(out.diff)
        ok = (out.noise > 0) & ~out.mask
        np.divide(out.diff, out.noise, out=scaled, where=ok)
        result.append(scaled)
    if get_noise:
        result.append(out.noise)
    if get_kernel:
        result.append(out.kernel)
    if get_header:
        result.append(out.header)
    return result
# ---- end run_hotpants ------------------------------------------------------------------


def _zogy_noise(image, template, mask, template_mask, err, template_err, image_gain,
                template_gain, image_readnoise, template_readnoise, noise_model, log):
    """ZOGY's noise maps for ``err`` None or True, built by the common noise model."""
    from diffgui.engine.common.noise import resolve_noise
    from diffgui.engine.errors import as_image, as_mask

    out = []
    for e, img, m, gain, rn, name in ((err, image, mask, image_gain, image_readnoise, "err"),
                                      (template_err, template, template_mask, template_gain,
                                       template_readnoise, "template_err")):
        if e is None or e is True:
            arr = as_image(img, name.replace("err", "image") if name == "err" else "template")
            e = resolve_noise(True, arr, gain=gain, mask=as_mask(m, arr.shape, "mask"), name=name,
                              read_noise=rn, model=noise_model, log=log)
        out.append(e)
    return out


# ---- run_zogy (owner: ZOGY) -------------------------------------------------------------
def run_zogy(image, template, mask=None, template_mask=None, err=None, template_err=None,
             image_psf=None, template_psf=None, image_gain=None, template_gain=None,
             image_fwhm=None, template_fwhm=None, scale=None, psf_clean=0, dx=0.25, dy=0.25,
             nx=1, ny=None, overlap=50, fit_scale=True, fit_shift=True, good_regions=None,
             image_obj=None, template_obj=None, get_psf=False, get_Fpsf=False, nthreads=0,
             verbose=False, *, cancel=None, image_readnoise=None, template_readnoise=None,
             noise_model="poisson", memory_limit=None, **kwargs):
    """Subtract ``template`` from ``image`` with ZOGY (Zackay, Ofek & Gal-Yam 2016).

    Same parameters, defaults and return values as ``stdpipe.subtraction.run_zogy``,
    with PSFs estimated by :func:`diffgui.engine.psf.estimate_psf` (no PSFEx or
    SExtractor) when not given. The images must be aligned; ``F_n = 1`` and
    ``F_r`` = template flux / science flux, so ``D`` is in science flux units.

    Parameters
    ----------
    image, template : ndarray
        Aligned science and template images of one shape.
    mask, template_mask : ndarray of bool, optional
        True = bad pixel; non-finite pixels are always bad. Bad pixels are
        replaced by the background with inflated noise (no ringing leaks out)
        and are 0 in ``D``, ``S_corr`` and ``Fpsf``.
    err, template_err : ndarray or bool, optional
        Noise (sigma) maps including source noise; None or True builds them
        from the background RMS and the gain. The caller's arrays are never
        modified.
    image_psf, template_psf : dict, ndarray or str, optional
        PSF as a PSFEx-layout dict (from stdpipe, PSFEx or
        :mod:`diffgui.engine.psf`), a centred 2-D stamp (constant PSF) or a
        PSFEx ``.psf`` file. Estimated from the image's stars when None.
    image_gain, template_gain : float, optional
        Gains for the noise maps' source term.
    image_fwhm, template_fwhm : float, optional
        FWHM guesses for PSF estimation.
    scale : float, optional
        ``F_r``. None: from the object lists (matched objects' flux ratio)
        when both exist, else 1; refined from the images if ``fit_scale``.
    psf_clean : float
        Zero PSF pixels below this fraction of the peak.
    dx, dy : float
        Astrometric noise (sigma, pixels) of the ``S_corr`` variance.
    nx, ny : int
        Number of sub-images (``ny=None``: ``nx``); each gets its PSFs at its
        centre, its own scale/shift fit, and only its interior is kept.
    overlap : int
        Overlap of the sub-images in pixels.
    fit_scale, fit_shift : bool
        Fit the flux scale and a sub-pixel template shift (within +-0.5 px).
    good_regions : ndarray of bool, optional
        Pixels used by the fit (True = use); default: squares of +-3 FWHM
        around the image objects, or the whole image.
    image_obj, template_obj : astropy.table.Table, optional
        Object lists (x, y, flux, fluxerr, flags); from PSF estimation when
        not given.
    get_psf : bool
        Also return ``P_D`` (of the sub-image nearest the centre).
    get_Fpsf : bool
        Also return the PSF-photometry image ``Fpsf`` and its error.
    nthreads : int
        FFT threads (0: all cores).
    verbose : bool or callable
        Log messages (a callable receives strings).
    cancel : callable, optional
        Returns True to abort between stages (raises ``Cancelled``).
    memory_limit : float or str, optional
        Refuse the run (``InputError``) when its estimated peak memory is
        above this (bytes, ``'8G'``, ``'50%'``, ``'off'``); default
        ``$DIFFGUI_MEMORY_LIMIT`` or 75 % of the available memory.
    image_readnoise, template_readnoise : float, optional
        Read noise (electrons) of the noise maps built when ``err`` is None or True.
    noise_model : {'poisson', 'stdpipe'}
        How those maps are built (:func:`diffgui.engine.common.noise.build_noise_map`);
        they are built here and checked against the measured pixel noise.
    **kwargs
        Passed to PSF estimation: ``order``, ``psf_size``, ``oversampling``,
        ``thresh``, ``minarea``, ``aper``, ``sn``, ``max_stars`` ... stdpipe's
        PSFEx-only options (``sex_extra``, ``psfex_extra``, ...) are ignored.
        One ZOGY option: ``noise_correlation`` (default False: white noise, as
        in the paper and stdpipe); ``'auto'`` measures the pixel-noise
        correlation of each image and whitens it, which resampled (drizzled,
        SWarped) images need for a correctly normalised ``S_corr``; or a pair
        of correlation kernels. Do not use ``'auto'`` on very crowded fields,
        where star wings read as correlated noise. ``background``: 'mesh'
        (default) fits a constant and a plane with the flux scale and removes
        the 64 px mesh background of ``D`` (the sky estimates of crowded
        fields differ); 'none' takes the images as background-free.
        ``flux_scale`` (how ``fit_scale`` fits F_r): 'kernel' takes one F_r for
        the frame from the sum of a free matching kernel fitted between the
        images (free of PSF-model errors, which bias ZOGY's own fit by 1-4 % on
        crowded fields); 'fit' fits F_r with the shift by least squares on D in
        each tile (optimal for exact PSFs); default 'kernel'. ``cosmics``
        (default True): pixels much
        sharper than each image's PSF (cosmic rays, hot pixels) are masked and
        filled from their neighbours; False keeps them.

    Returns
    -------
    list
        ``[D, S_corr]``, then ``P_D`` if ``get_psf``, then ``Fpsf, Fpsf_err`` if
        ``get_Fpsf``. ``S_corr`` saturates for bright sources through the
        astrometric term; ``Fpsf / Fpsf_err`` does not.
    """
    from diffgui.engine import zogy
    from diffgui.engine.errors import make_logger

    _preflight("zogy", image, memory_limit, make_logger(verbose),
               positive=[("image_gain", image_gain), ("template_gain", template_gain),
                         ("image_fwhm", image_fwhm), ("template_fwhm", template_fwhm),
                         ("scale", scale)],
               non_negative=[("dx", dx), ("dy", dy), ("psf_clean", psf_clean)],
               nx=nx, ny=ny, overlap=overlap)
    from diffgui.engine.errors import validate_pair

    vp = _mask_hot_pixels(validate_pair(image, template, mask, template_mask),
                          image_fwhm, template_fwhm, make_logger(verbose))
    mask, template_mask = vp.mask, vp.template_mask
    err, template_err = _zogy_noise(image, template, mask, template_mask, err, template_err,
                                    image_gain, template_gain, image_readnoise,
                                    template_readnoise, noise_model, make_logger(verbose))
    return zogy.run(image, template, mask=mask, template_mask=template_mask, err=err,
                    template_err=template_err, image_psf=image_psf, template_psf=template_psf,
                    image_gain=image_gain, template_gain=template_gain, image_fwhm=image_fwhm,
                    template_fwhm=template_fwhm, scale=scale, psf_clean=psf_clean, dx=dx, dy=dy,
                    nx=nx, ny=ny, overlap=overlap, fit_scale=fit_scale, fit_shift=fit_shift,
                    good_regions=good_regions, image_obj=image_obj, template_obj=template_obj,
                    get_psf=get_psf, get_Fpsf=get_Fpsf, nthreads=nthreads, verbose=verbose,
                    cancel=cancel, **kwargs)
# ---- end run_zogy ----------------------------------------------------------------------


# ---- run_sfft (owner: SFFT) --------------------------------------------------------------
@_with_noise_options
def run_sfft(image, template, mask=None, template_mask=None, err=None, template_err=None,
             image_gain=None, template_gain=None, kernel_shape=(7, 7), kernel_poly_order=2,
             bg_poly_order=2, flux_poly_order=1, flux_penalty=1000.0, ridge=1e-06,
             sigma_clip=3.0, max_iter=5, obj=None, obj_size=None, get_convolved=False,
             get_scaled=False, get_noise=False, get_kernel=False, verbose=False,
             *, cancel=None, decorrelate=False, fit_weights="noise",
             image_readnoise=None, template_readnoise=None, noise_model="poisson",
             memory_limit=None):
    """Image subtraction with SFFT: a spatially varying delta-function kernel
    fitted by least squares with FFT-assembled normal equations.

    Same parameters, defaults and return order as stdpipe 0.4.1's
    ``run_sfft``; the solver is :func:`diffgui.engine.sfft.solve`.

    Parameters
    ----------
    image, template : ndarray
        Science and template images on the same pixel grid.
    mask, template_mask : ndarray of bool, optional
        Bad pixels (True). Non-finite pixels are always masked. Template
        defects are grown by the kernel footprint.
    err, template_err : ndarray or bool, optional
        Noise (sigma) maps, or True to build them from the images and
        ``image_gain`` / ``template_gain`` (background RMS plus source Poisson
        noise). Without ``err`` the fit uses uniform weights and the
        difference noise is a constant estimated from the residuals; without
        ``template_err`` the template is treated as noiseless.
    image_gain, template_gain : float, optional
        Gains (e-/ADU) used when building noise maps.
    kernel_shape : tuple of int
        Odd kernel size (ky, kx).
    kernel_poly_order, bg_poly_order, flux_poly_order : int
        Polynomial orders of the kernel variation, differential background
        and kernel sum (flux scale); flux_poly_order <= kernel_poly_order.
    flux_penalty : float
        Weight of the kernel-sum constraint (relative to the data).
    ridge : float
        Tikhonov regularisation of the kernel terms (never the background).
    sigma_clip : float
        Outlier rejection threshold on normalised residuals (None/0: off).
    max_iter : int
        Maximum number of fits (>= 1).
    obj : table, optional
        Objects (``x``, ``y``, optionally ``flags``, ``flux``, ``fluxerr``,
        ``fwhm``): the fit is restricted to boxes around them.
    obj_size : int, optional
        Half-size of those boxes; default 3 x median fwhm, or 15 px.
    get_convolved, get_scaled, get_noise, get_kernel : bool
        Also return the convolved template, the noise-normalised difference
        (0 where masked, in ``dmask`` or without usable noise), the
        difference noise map, and the :class:`~diffgui.engine.sfft.SFFTResult`.
    verbose : bool or callable
        Progress messages (a callable receives strings).
    cancel : callable, optional
        Polled between stages; returning True raises ``Cancelled``.
    decorrelate : bool
        Whiten the difference noise (kernel of Reiss & Lupton 2016, as the
        SFFT authors do): diff, scaled and noise are then the decorrelated ones.
    {noise_options}
    fit_weights : {'noise', 'uniform'}
        ``'noise'`` (default) weights the fit by the inverse variance of the
        noise maps; ``'uniform'`` fits every pixel equally while still using
        the maps for the outputs. Uniform weights let bright stars, whose
        Poisson noise makes them weigh little, drive the kernel: on the JWST
        pair with a 15x15 kernel and no clipping they halve the bright-star
        residual of the published SFFT difference (bench/README.md).
    memory_limit : float or str, optional
        Refuse the run (``InputError``) when its estimated peak memory is
        above this (bytes, ``'8G'``, ``'50%'``, ``'off'``); default
        ``$DIFFGUI_MEMORY_LIMIT`` or 75 % of the available memory. The
        normal equations grow as (kernel pixels x kernel terms)^2.

    Returns
    -------
    ndarray or list
        The difference, or ``[diff, convolved, scaled, noise, SFFTResult]``
        restricted to the requested ``get_*`` items, in that order.
    """
    import numpy as np

    from diffgui.engine.errors import InputError, check_cancel, make_logger, validate_pair

    log = make_logger(verbose)
    # Before the solver's imports: a hopeless kernel is refused at once.
    _preflight("sfft", image, memory_limit, log,
               positive=[("image_gain", image_gain), ("template_gain", template_gain)],
               kernel_shape=kernel_shape, kernel_poly_order=kernel_poly_order,
               bg_poly_order=bg_poly_order)
    from diffgui.engine.common import noise as _noise
    from diffgui.engine import sfft as _sfft

    vp = _mask_hot_pixels(validate_pair(image, template, mask, template_mask, err, template_err),
                          None, None, log)
    check_cancel(cancel)
    err_map = _noise.resolve_noise(vp.err, vp.image, gain=image_gain, mask=vp.mask, name="err",
                                   read_noise=image_readnoise, model=noise_model, log=log)
    check_cancel(cancel)
    terr_map = _noise.resolve_noise(vp.template_err, vp.template, gain=template_gain,
                                    mask=vp.template_mask, name="template_err",
                                    read_noise=template_readnoise, model=noise_model, log=log)
    check_cancel(cancel)

    fit_mask = vp.mask
    if obj is not None:
        ks = (kernel_shape, kernel_shape) if np.isscalar(kernel_shape) else tuple(kernel_shape)
        n_params = (int(ks[0]) * int(ks[1]) * (kernel_poly_order + 1) * (kernel_poly_order + 2) // 2
                    + (bg_poly_order + 1) * (bg_poly_order + 2) // 2)
        regions = _sfft.object_regions(obj, vp.shape, obj_size, vp.mask | vp.template_mask,
                                       n_params, log=log)
        if regions is not None:
            fit_mask = vp.mask | ~regions

    if fit_weights not in ("noise", "uniform"):
        raise InputError(f"fit_weights must be 'noise' or 'uniform', got {fit_weights!r}")
    uniform = fit_weights == "uniform"
    result = _sfft.solve(vp.image, vp.template, mask=fit_mask, template_mask=vp.template_mask,
                         err=None if uniform else err_map,
                         template_err=None if uniform else terr_map, kernel_shape=kernel_shape,
                         kernel_poly_order=kernel_poly_order, bg_poly_order=bg_poly_order,
                         flux_poly_order=flux_poly_order, flux_penalty=flux_penalty, ridge=ridge,
                         sigma_clip=sigma_clip, max_iter=max_iter, verbose=verbose, cancel=cancel)
    diff = result.diff
    # Bad output pixels (issue 12): science defects, template defects grown by the
    # kernel footprint and the border the kernel cannot reach (result.dmask); 0 in
    # the difference and the noise, as in ZOGY's D and HOTPANTS's noise.
    out_bad = vp.mask | result.dmask
    diff[out_bad] = 0.0
    if not (get_convolved or get_scaled or get_noise or get_kernel or decorrelate):
        return diff

    need_noise = get_scaled or get_noise or decorrelate
    if need_noise:
        check_cancel(cancel)
        var_t = None
        if terr_map is not None:
            tv = np.square(terr_map)
            tv[vp.template_mask] = 0.0
            var_t = _sfft.convolved_variance(result, tv, cancel=cancel)
            del tv
        if err_map is not None:
            var_s = np.square(err_map)
        else:
            # Constant science variance from the residuals, minus the template part.
            r = result.diff[result.fit_mask]
            s2 = (1.4826 * float(np.median(np.abs(r - np.median(r))))) ** 2 if r.size else 0.0
            if var_t is not None and r.size:
                s2 = max(s2 - float(np.median(var_t[result.fit_mask])), 0.25 * s2)
            var_s = s2
            del r
        bad = out_bad
        if decorrelate:
            good_s = ~bad
            sig_s = float(np.sqrt(np.median(np.broadcast_to(var_s, vp.shape)[good_s])))
            if terr_map is not None:
                sig_t = float(np.median(terr_map[~vp.template_mask]))
                tvar = np.square(terr_map)
                tvar[vp.template_mask] = 0.0
            else:
                sig_t = _noise.estimate_background(vp.template, mask=vp.template_mask).globalrms
                tvar = sig_t ** 2
            log(f"SFFT: decorrelating the difference (noise {sig_s:.4g} / {sig_t:.4g})")
            diff, noise = _sfft.decorrelate_difference(result, diff, var_s, tvar, bad, sig_s,
                                                       sig_t, cancel=cancel)
            del tvar
        else:
            noise = np.empty(vp.shape)
            noise[...] = var_s
            if var_t is not None:
                noise += var_t
            np.sqrt(noise, out=noise)
        del var_t
        diff[bad] = 0.0
        noise[bad] = 0.0
    out = [diff]
    if get_convolved:
        out.append(result.convolved)
    if get_scaled:
        ok = ~bad & np.isfinite(noise) & (noise > 0)
        scaled = np.zeros(vp.shape)
        np.divide(diff, noise, out=scaled, where=ok)
        out.append(scaled)
    if get_noise:
        out.append(noise)
    if get_kernel:
        out.append(result)
    if len(out) == 1:
        return diff
    return out
# ---- end run_sfft ------------------------------------------------------------------------
