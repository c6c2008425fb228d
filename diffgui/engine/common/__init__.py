"""Building blocks every method shares: noise models, background, detection, FFTs, tiling.

Modules here import only numpy, scipy, astropy, sep, pyfftw, :mod:`diffgui.engine.errors` and
each other; never a method package (``zogy``, ``sfft``, ``alard_lupton``, ``hotpants``) nor
``psf``, ``params`` or ``simulation``.
"""
