"""Building blocks every method shares.

Modules
-------
noise, detection, image_analysis   background and RMS, noise maps, sep detection
fft, tiling, blas                  pyfftw plans and convolution, overlapping tiles, one BLAS thread
preflight, resources               checks every ``run_*`` does first, the memory guard
alignment, centroids, registration is a pair aligned; bringing the science onto the template grid
quality, score_stars, diagnostics  the scorecard of a difference, field diagnostics before a run
photometry, defects                forced PSF photometry on a difference, isolated hot pixels
atomic, process                    atomic file writes, child processes and temporary folders

Modules here import only numpy, scipy, astropy, sep, pyfftw, :mod:`diffgui.engine.errors` and
each other; never a method package (``zogy``, ``sfft``, ``alard_lupton``, ``hotpants``) nor
``psf``, ``params`` or ``simulation``.
"""
