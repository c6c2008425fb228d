"""A complete run of the executable on arrays: inputs written to a work folder,
the command, the process, the outputs read and checked."""

from __future__ import annotations

import os
import shlex
import shutil

import numpy as np

from diffgui.engine.errors import ExecutableError, check_cancel, make_logger
from diffgui.engine.hotpants.command_line import build_argv, find_executable
from diffgui.engine.hotpants.failures import _tail, check_outputs, check_process
from diffgui.engine.hotpants.outputs import HotpantsOutputs, read_outputs
from diffgui.engine.hotpants.process import run_process

#: Seconds after which run_hotpants kills the executable (None: no limit).
DEFAULT_TIMEOUT = None

#: Input-mask value: HOTPANTS only blanks masked output pixels with bit 0x80 set.
MASK_BAD_BIT = 0x80


# ---- a complete run ------------------------------------------------------------------------

def _write_fits(path, data, dtype=np.float32):
    from astropy.io import fits

    fits.PrimaryHDU(np.ascontiguousarray(data, dtype=dtype)).writeto(path, overwrite=True)


def _prepare(data, bad):
    """Finite float32 copy: non-finite (and therefore masked) pixels get the median."""
    out = np.asarray(data, dtype=np.float32)
    nonfin = ~np.isfinite(out)
    if nonfin.any():
        out = out.copy()
        good = out[~nonfin]
        out[nonfin] = np.median(good[:: max(1, good.size // 1_000_000)]) if good.size else 0.0
    return out


def _absolute_paths(options):
    """File options given by the user, made absolute (HOTPANTS runs in the work folder)."""
    from diffgui.engine import params

    kinds = {s.name: s.type for s in params.hotpants_option_specs()}
    out = {}
    for k, v in options.items():
        if v is not None and kinds.get(k) == "path":
            v = os.path.abspath(os.fspath(v))
        elif v is not None and kinds.get(k) == "list_path":
            v = tuple(os.path.abspath(os.fspath(p)) for p in (v if isinstance(v, (list, tuple))
                                                               else [v]))
        out[k] = v
    return out


def read_xy_file(path, skip_first=False):
    """Substamp centres from a HOTPANTS -ssf/-cmp file (1-based 'x y' per line;
    lines starting with a letter are skipped) as a 0-based (n, 2) array."""
    xy = []
    with open(path) as fh:
        for i, line in enumerate(fh):
            parts = line.split()
            if (skip_first and i == 0) or len(parts) < 2 or parts[0][:1].isalpha():
                continue
            try:
                xy.append((float(parts[0]) - 1, float(parts[1]) - 1))
            except ValueError:
                continue
    return np.array(xy, dtype=float).reshape(-1, 2)


def run(image, template, *, mask=None, template_mask=None, err=None, template_err=None,
        options=None, stamp_xy=None, exe=None, tmpdir=None, workdir=None, verbose=False,
        cancel=None, timeout=None, keep_inputs=False) -> HotpantsOutputs:
    """Run the HOTPANTS executable on arrays and read its outputs.

    Parameters
    ----------
    image, template : ndarray
        Validated float images (non-finite pixels allowed: they are
        replaced by the median and masked).
    mask, template_mask : ndarray of bool, optional
        True = bad; written with bit 0x80 so that HOTPANTS blanks them.
    err, template_err : ndarray, optional
        Noise (sigma) maps, passed as -ini/-tni.
    options : dict
        HOTPANTS options (see :func:`derive_options`); the file options are
        added here.
    stamp_xy : ndarray (n, 2), optional
        0-based substamp centres, passed as a -ssf file.
    exe : str, optional
        Executable (default: found on PATH).
    tmpdir : str, optional
        A temporary folder is made inside it (and removed).
    workdir : str, optional
        Files go there and are kept (debugging).
    verbose : bool or callable
        HOTPANTS's output is streamed here line by line.
    cancel : callable, optional
        Kills the run when it returns True.
    timeout : float, optional
        Seconds before the run is killed.

    Returns
    -------
    HotpantsOutputs

    Raises
    ------
    ExecutableError, Cancelled
    """
    log = make_logger(verbose)
    exe = find_executable(exe)
    wd, cleanup = _work_folder(workdir, tmpdir)
    try:
        check_cancel(cancel)
        files = _write_inputs(wd, image, template, mask, template_mask, err, template_err,
                              stamp_xy)
        opts = _absolute_paths(options or {})
        if "ssf" in files:
            opts.pop("ssf", None)
        argv = build_argv({**files, **opts}, exe)
        log("running: " + " ".join(shlex.quote(a) for a in argv))
        with open(os.path.join(wd, "command.txt"), "w") as fh:
            fh.write(" ".join(shlex.quote(a) for a in argv) + "\n")
        proc = run_process(argv, wd, log=log, cancel=cancel, timeout=timeout)
        check_process(proc)
        out = _read_run_outputs(wd, files, proc, opts)
        check_outputs(out, stderr=proc.stderr + proc.stdout, image=image, template=template,
                      options=opts)
        return out
    finally:
        if cleanup:
            shutil.rmtree(wd, ignore_errors=True)


def _work_folder(workdir, tmpdir):
    """``(folder, remove_afterwards)``: ``workdir`` (kept) or a new temporary folder."""
    if workdir is not None:
        wd = os.fspath(workdir)
        os.makedirs(wd, exist_ok=True)
        return wd, False
    if tmpdir is not None:
        os.makedirs(os.fspath(tmpdir), exist_ok=True)
    # the folder's name records our PID: folders of killed runs (kill -9) are removed here
    from diffgui.engine.common.process import clean_stale_dirs, make_temp_dir

    clean_stale_dirs("diffgui_hotpants_", dir=tmpdir)
    return make_temp_dir("diffgui_hotpants_", dir=tmpdir), True


def _write_inputs(wd, image, template, mask, template_mask, err, template_err, stamp_xy):
    """Write the input FITS files (and a -ssf file) into ``wd``; returns the file
    options (HOTPANTS option -> file name)."""
    files = {"inim": "image.fits", "tmplim": "template.fits", "outim": "diff.fits",
             "oni": "noise.fits", "oci": "convolved.fits", "oki": "kernel.fits",
             "omi": "mask.fits", "savexy": "stamps.reg"}
    for name in ("diff.fits", "noise.fits", "convolved.fits", "kernel.fits", "mask.fits",
                 "stamps.reg", "stamps.reg.all", "stamps.reg.skipped"):
        p = os.path.join(wd, name)
        if os.path.exists(p):
            os.remove(p)  # stale outputs of an earlier run in a kept workdir
    _write_fits(os.path.join(wd, files["inim"]), _prepare(image, mask))
    _write_fits(os.path.join(wd, files["tmplim"]), _prepare(template, template_mask))
    for key, m, fname in (("imi", mask, "image_mask.fits"),
                          ("tmi", template_mask, "template_mask.fits")):
        if m is not None and np.any(m):
            _write_fits(os.path.join(wd, fname), np.where(m, MASK_BAD_BIT, 0), np.int16)
            files[key] = fname
    for key, e, fname in (("ini", err, "image_noise.fits"),
                          ("tni", template_err, "template_noise.fits")):
        if e is not None:
            sig = np.where(np.isfinite(e) & (e > 0), e, np.nanmax(e))
            _write_fits(os.path.join(wd, fname), sig)
            files[key] = fname
    if stamp_xy is not None and len(stamp_xy):
        with open(os.path.join(wd, "stamps.xy"), "w") as fh:
            for x, y in np.asarray(stamp_xy, float):
                fh.write(f"{x + 1:.2f} {y + 1:.2f}\n")
        files["ssf"] = "stamps.xy"
    return files


def _read_run_outputs(wd, files, proc, opts):
    """The outputs HOTPANTS wrote into ``wd`` (ExecutableError when it wrote none)."""
    diff_path = os.path.join(wd, files["outim"])
    if not os.path.exists(diff_path):
        raise ExecutableError("HOTPANTS exited without writing the difference image. "
                              f"Last output:\n{_tail(proc.stderr + proc.stdout)}")

    def path(key):
        p = os.path.join(wd, files[key])
        return p if os.path.exists(p) else None

    try:
        out = read_outputs(diff_path, noise_path=path("oni"), convolved_path=path("oci"),
                           kernel_path=path("oki"), mask_path=path("omi"),
                           stamps_path=path("savexy"), options=opts)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExecutableError(f"cannot read the HOTPANTS outputs: {exc}") from None
    out.process = proc
    return out
