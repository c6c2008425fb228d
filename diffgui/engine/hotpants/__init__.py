"""The HOTPANTS executable: options -> command line, running it, reading its outputs.

``run_hotpants`` (in :mod:`diffgui.engine.api`) uses this module in
four steps:

1. :func:`derive_options` chooses the options stdpipe's wrapper would
   (thresholds from the data, gains, r/rss from the FWHMs, the ng basis
   from sigma_match, regions) and lets ``extra`` override them;
2. :func:`run` writes the inputs to a working folder, runs the executable
   with an argument list (never a shell), streams its output to the log,
   kills it on cancel or timeout, and reads the outputs back;
3. :func:`read_outputs` turns the files into arrays, the header and a
   :class:`~diffgui.engine.alard_lupton.SpatialKernel` rebuilt from the
   kernel table;
4. :func:`check_outputs` turns HOTPANTS's silent failures (exit code 0, no
   stamps, all-zero output, FATAL messages) into
   :class:`~diffgui.engine.errors.ExecutableError` with the reason.
"""

from __future__ import annotations

import math
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from diffgui.engine.errors import Cancelled, ExecutableError, InputError, check_cancel, make_logger

__all__ = [
    "EXE_NAME",
    "DEFAULT_TIMEOUT",
    "MASK_BAD_BIT",
    "find_executable",
    "build_argv",
    "parse_command",
    "derive_options",
    "stamps_from_obj",
    "ProcessResult",
    "run_process",
    "HotpantsOutputs",
    "read_outputs",
    "check_outputs",
    "run",
    "residual_gradient",
    "read_xy_file",
]

EXE_NAME = "hotpants"

#: Seconds after which run_hotpants kills the executable (None: no limit).
DEFAULT_TIMEOUT = None

#: Input-mask value: HOTPANTS only blanks masked output pixels with bit 0x80 set.
MASK_BAD_BIT = 0x80

# Output flag bit meaning "bad output pixel" in the -omi mask.
_OUT_BAD = 0x8000


# ---- executable and command line ----------------------------------------------------------

def find_executable(exe=None) -> str:
    """Path of the HOTPANTS executable: ``exe`` if given, else ``hotpants`` on PATH.

    Raises
    ------
    ExecutableError
        When it cannot be found or is not executable.
    """
    if exe:
        path = os.fspath(exe)
        found = shutil.which(path) if os.sep not in path else path
        if not found or not os.path.isfile(found):
            raise ExecutableError(f"HOTPANTS executable {path!r} does not exist.")
        if not os.access(found, os.X_OK):
            raise ExecutableError(f"HOTPANTS executable {path!r} is not executable (chmod +x).")
        return found
    found = shutil.which(EXE_NAME)
    if not found:
        raise ExecutableError(
            "the HOTPANTS executable 'hotpants' was not found on PATH: install it "
            "(https://github.com/acbecker/hotpants), pass _exe='/path/to/hotpants', "
            "or use backend='native'.")
    return found


def build_argv(options, exe: str = EXE_NAME) -> list:
    """Argument list ``[exe, '-opt', 'value', ...]`` for a dict of HOTPANTS options.

    Options are written in the order of the dict; None/False values are
    left out; lists are spread (``-ng 3 6 0.7 ...``). Values are checked
    against the option specs of :mod:`diffgui.engine.params`.
    """
    from diffgui.engine import params

    return [os.fspath(exe)] + params.hotpants_argv(options)


def _token_value(tok):
    try:
        v = float(tok)
    except ValueError:
        return tok
    return int(v) if v.is_integer() and re.fullmatch(r"[-+]?\d+(\.0*)?", tok) else v


def parse_command(command):
    """Split a HOTPANTS command line into the executable and its options.

    Parameters
    ----------
    command : str or list of str
        A shell-style command (as in ``command.txt`` or the DIFFCMD header)
        or an argument list.

    Returns
    -------
    exe : str
    options : dict
        Option name (lower case, no dash) -> value: True for switches, one
        value, or a tuple for options with several values. Numbers are
        converted (``'47500'`` -> 47500, ``'0.521'`` -> 0.521).
    """
    from diffgui.engine import params

    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        raise InputError("empty HOTPANTS command")
    exe, rest = argv[0], argv[1:]
    specs = {s.name: s for s in params.hotpants_option_specs()}
    out = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("-") or len(tok) < 2:
            raise InputError(f"unexpected argument {tok!r} in HOTPANTS command")
        name = tok[1:].lower()
        spec = specs.get(name)
        if spec is None:
            raise InputError(f"unknown HOTPANTS option {tok!r}")
        if spec.type == "bool":
            out[name] = True
            i += 1
            continue
        if name == "ng":
            n = int(float(rest[i + 1]))
            vals = rest[i + 1:i + 2 + 2 * n]
            i += 2 + 2 * n
        elif name == "pca":
            n = int(rest[i + 1])
            vals = rest[i + 2:i + 2 + n]
            i += 2 + n
        else:
            k = spec.nargs if isinstance(spec.nargs, int) else 1
            vals = rest[i + 1:i + 1 + k]
            i += 1 + k
        vals = tuple(_token_value(v) for v in vals)
        out[name] = vals[0] if len(vals) == 1 and name not in ("ng", "pca") else vals
    return exe, out


# ---- options run_hotpants derives from the data --------------------------------------------

def _sample(data, bad, n=300_000):
    step = max(1, int(math.sqrt(data.size / n)))
    d = data[::step, ::step]
    b = bad[::step, ::step] if bad is not None else None
    v = d[~b] if b is not None else d.ravel()
    return v[np.isfinite(v)]


def _limits(data, bad):
    """stdpipe's thresholds: lower = median - 10 mad_std, upper = max + 1% of
    the range, or just below a saturation plateau when many pixels share the
    maximum value."""
    v = _sample(data, bad)
    if v.size == 0:
        raise InputError("no usable pixel to derive thresholds from")
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    use = np.isfinite(data) if bad is None else ~bad
    vmax = float(np.max(data, where=use, initial=-np.inf))
    vmin = float(np.min(data, where=use, initial=np.inf))
    lower = med - 10.0 * mad
    if lower >= vmin and mad == 0:
        lower = vmin - 1.0
    nsat = int(np.count_nonzero((data >= vmax - 1e-6 * max(abs(vmax), 1.0)) & use))
    if nsat >= 5 and vmax > med + 50 * max(mad, 1e-12):
        upper = vmax - 1e-6 * max(abs(vmax), 1.0)
        saturated = True
    else:
        upper = vmax + 0.01 * (vmax - vmin)
        saturated = False
    if not upper > lower:
        upper = lower + max(abs(lower), 1.0)
    # A sky level within a few sigma of zero: the background was subtracted.
    sky_subtracted = med < 5.0 * mad
    return lower, upper, saturated, sky_subtracted


def _round_sig(x, digits=6):
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def derive_options(image, template, mask=None, template_mask=None, *, image_fwhm=None,
                   template_fwhm=None, image_gain=None, template_gain=1000, rel_r=3,
                   rel_rss=4, nx=1, ny=None, extra=None, image_noise=False,
                   template_noise=False, log=None) -> dict:
    """HOTPANTS options as run_hotpants chooses them, ``extra`` overriding.

    The choices follow stdpipe's wrapper: il/tl = median - 10 mad_std and
    iu/tu just above the maximum (or just below a saturation plateau),
    iuk/tuk = iu/tu; ig/tg from the gains; r = ceil(rel_r FWHM) and
    rss = ceil(rel_rss FWHM) with the larger FWHM; the recommended
    ng = 3 6 0.5s 4 s 2 2s with s = sigma_match (at least 1 px) when the
    FWHMs differ; the sharper image is convolved (the template when the
    FWHMs are unknown, both tried when they differ by less than 10 %); the
    output is in the science image's flux units
    (n = i); ko = 0 (the kernel varies through the nx x ny regions, as in
    stdpipe) but bgo = 1, since stdpipe's bgo = 0 leaves any differential
    sky gradient in the difference.

    Returns
    -------
    dict
        Option name -> value, ready for :func:`build_argv` or the native backend.
    """
    log = log or make_logger(False)
    extra = dict(extra or {})
    o = {}
    il, iu, isat, isub = _limits(image, mask)
    tl, tu, tsat, tsub = _limits(template, template_mask)
    o["tu"], o["tuk"], o["tl"] = _round_sig(tu), _round_sig(tu), _round_sig(tl)
    o["iu"], o["iuk"], o["il"] = _round_sig(iu), _round_sig(iu), _round_sig(il)
    for name, sat, val in (("science image", isat, iu), ("template", tsat, tu)):
        if sat:
            log(f"{name}: saturation plateau found at {val:g}, pixels at it are masked")
    if image_gain is not None:
        o["ig"] = float(image_gain)
    if template_gain is not None:
        o["tg"] = float(template_gain)
    fwhms = [f for f in (image_fwhm, template_fwhm) if f is not None]
    if fwhms:
        f = max(float(v) for v in fwhms)
        o["r"] = int(math.ceil(rel_r * f))
        o["rss"] = int(math.ceil(rel_rss * f))
    if image_fwhm is not None and template_fwhm is not None and image_fwhm != template_fwhm:
        s = max(1.0, math.sqrt(abs(image_fwhm ** 2 - template_fwhm ** 2)) / 2.35)
        o["ng"] = (3, 6, round(0.5 * s, 4), 4, round(s, 4), 2, round(2.0 * s, 4))
    if image_fwhm is not None and template_fwhm is not None:
        if abs(image_fwhm - template_fwhm) < 0.1 * max(image_fwhm, template_fwhm):
            o["c"] = "b"  # too close to call: let the fit choose
        else:
            o["c"] = "t" if template_fwhm <= image_fwhm else "i"
    else:
        o["c"] = "t"
    o["n"] = "i"
    o["ko"] = 0
    o["bgo"] = 1
    o["nrx"] = int(nx)
    o["nry"] = int(ny if ny is not None else nx)
    o["v"] = 1
    for k, v in extra.items():
        if v is not None:
            o[k] = v
        else:
            o.pop(k, None)
    if "r" in o and "rss" in o and o["rss"] < o["r"]:
        raise InputError(f"rss ({o['rss']}) must be >= r ({o['r']}): HOTPANTS stops otherwise.")
    for p in "ti":
        if p + "u" in extra and p + "uk" not in extra:
            o[p + "uk"] = o[p + "u"]
        if o.get(p + "u") is not None and o.get(p + "l") is not None and not o[p + "u"] > o[p + "l"]:
            raise InputError(f"{p}u ({o[p + 'u']}) must be above {p}l ({o[p + 'l']}).")
    for name, sub, given, arg in (("science image", isub, image_noise, "err"),
                                  ("template", tsub, template_noise, "template_err")):
        if sub and not given:
            # HOTPANTS's Poisson model |data|/gain then misses the sky noise.
            log(f"WARNING: the {name} looks background-subtracted but has no noise map: "
                f"HOTPANTS's noise model will be far too low; pass {arg}=True or a sigma map.")
    for p, given, name in (("i", image_noise, "science image"), ("t", template_noise, "template")):
        if not given and o.get(p + "r") is None:
            log(f"note: no read noise for the {name} (extra['{p}r'], e-): HOTPANTS's noise "
                "model assumes 0")
    if not o.get("bgo"):
        log("note: bgo=0 fits a constant differential background per region; a sky "
            "gradient needs bgo >= 1")
    return o


def stamps_from_obj(obj):
    """0-based (x, y) centres from an object table (x, y columns), or None."""
    if obj is None:
        return None
    try:
        x = np.asarray(obj["x"], dtype=float)
        y = np.asarray(obj["y"], dtype=float)
    except (KeyError, ValueError, TypeError, IndexError):
        raise InputError("obj must be a table with 'x' and 'y' columns (0-based pixels)") from None
    ok = np.isfinite(x) & np.isfinite(y)
    return np.stack([x[ok], y[ok]], axis=1)


# ---- running the executable ----------------------------------------------------------------

@dataclass
class ProcessResult:
    """Exit status and output of one executable run."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            proc.kill()
        except OSError:
            pass


def run_process(argv, cwd=None, *, log=None, cancel=None, timeout=None,
                poll: float = 0.05) -> ProcessResult:
    """Run ``argv`` (no shell), streaming each output line to ``log``.

    Parameters
    ----------
    argv : list of str
    cwd : str, optional
    log : callable, optional
        Receives every stdout/stderr line as it arrives.
    cancel : callable, optional
        Polled every ``poll`` seconds; returning True kills the process
        (and its children) and raises :class:`Cancelled`.
    timeout : float, optional
        Seconds; the process is killed and :class:`ExecutableError` raised
        when it runs longer.

    Returns
    -------
    ProcessResult
    """
    log = log or (lambda *a: None)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen([os.fspath(a) for a in argv], cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
    except FileNotFoundError:
        raise ExecutableError(f"cannot run {argv[0]!r}: no such file") from None
    except PermissionError:
        raise ExecutableError(f"cannot run {argv[0]!r}: permission denied") from None
    except OSError as exc:
        raise ExecutableError(f"cannot run {argv[0]!r}: {exc}") from None
    lines: "queue.Queue" = queue.Queue()
    chunks = {"out": [], "err": []}

    def reader(stream, key):
        for line in iter(stream.readline, ""):
            chunks[key].append(line)
            lines.put(line.rstrip("\n"))
        stream.close()

    threads = [threading.Thread(target=reader, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=reader, args=(proc.stderr, "err"), daemon=True)]
    for t in threads:
        t.start()

    def drain():
        while True:
            try:
                log(lines.get_nowait())
            except queue.Empty:
                return

    try:
        while True:
            try:
                proc.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pass
            drain()
            if cancel is not None and cancel():
                _kill(proc)
                proc.wait()
                raise Cancelled("HOTPANTS was stopped (cancelled)")
            if timeout is not None and time.monotonic() - t0 > timeout:
                _kill(proc)
                proc.wait()
                raise ExecutableError(f"HOTPANTS did not finish within {timeout:g} s and was "
                                      "stopped; raise the timeout or use fewer stamps/regions.")
    except BaseException:
        _kill(proc)
        raise
    for t in threads:
        t.join(timeout=5)
    drain()
    # Children that inherited the pipes are not waited for; make sure none survive.
    _kill(proc)
    return ProcessResult(proc.returncode, "".join(chunks["out"]), "".join(chunks["err"]),
                         time.monotonic() - t0)


# ---- reading outputs -----------------------------------------------------------------------

@dataclass
class HotpantsOutputs:
    """Everything one subtraction produced.

    Arrays are native float64; ``mask`` is True at bad output pixels (they
    hold the fill value ``fi`` in ``diff``, ``fin`` in ``noise``).
    """

    diff: np.ndarray
    header: object
    convolved: Optional[np.ndarray] = None
    noise: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    kernel: object = None
    stamps: Optional[np.ndarray] = None
    process: Optional[ProcessResult] = None
    extras: dict = field(default_factory=dict)


def _native(data):
    return np.ascontiguousarray(data, dtype=np.float64)


def read_stamps(path):
    """Substamp centres from a -savexy file, 0-based (n, 2) array."""
    xy = []
    with open(path) as fh:
        for line in fh:
            m = re.search(r"box\(\s*([-\d.]+)\s*,\s*([-\d.]+)", line)
            if m:
                xy.append((float(m.group(1)) - 1, float(m.group(2)) - 1))
    return np.array(xy, dtype=float).reshape(-1, 2)


def _command_options(header):
    cmd = header.get("DIFFCMD")
    if not cmd:
        return {}
    try:
        return parse_command(str(cmd))[1]
    except (InputError, ValueError, IndexError):
        return {}


def read_outputs(diff_path, *, noise_path=None, convolved_path=None, kernel_path=None,
                 mask_path=None, stamps_path=None, options=None) -> HotpantsOutputs:
    """Read the files of a HOTPANTS run.

    Parameters
    ----------
    diff_path : str
        The -outim file. Extra HDUs written by -allm/-cim/-nim/-ndm/-hki are
        read from it when the separate files are not given.
    noise_path, convolved_path, kernel_path, mask_path, stamps_path : str, optional
        The -oni, -oci, -oki, -omi and -savexy files.
    options : dict, optional
        The run's options (for nsx/nsy/rss of multi-region kernels);
        taken from the DIFFCMD header keyword when not given.

    Returns
    -------
    HotpantsOutputs
        ``kernel`` is None when the run wrote no kernel table or the table
        is empty (no stamps; see :func:`check_outputs`).
    """
    from astropy.io import fits

    with fits.open(diff_path, memmap=False) as hdul:
        header = hdul[0].header.copy()
        diff = _native(hdul[0].data)
        extras = {}
        table = None
        for hdu in hdul[1:]:
            obj = str(hdu.header.get("OBJECT", "")).strip().lower()
            if isinstance(hdu, fits.BinTableHDU):
                table = (hdu.data.copy(), hdu.header.copy())
            elif obj.startswith("convolved"):
                extras["convolved"] = _native(hdu.data)
            elif obj.startswith("noise-scaled"):
                extras["scaled"] = _native(hdu.data)
            elif "noise" in obj:
                extras["noise"] = _native(hdu.data)
    out = HotpantsOutputs(diff=diff, header=header, extras=extras)
    out.noise = _native(fits.getdata(noise_path)) if noise_path else extras.get("noise")
    out.convolved = _native(fits.getdata(convolved_path)) if convolved_path else \
        extras.get("convolved")
    if mask_path:
        m = fits.getdata(mask_path)
        out.mask = (np.asarray(m).astype(np.int64) & _OUT_BAD) != 0
    else:
        fill = float(header.get("MASKVAL", 1e-30))
        out.mask = diff == np.float32(fill)
    if kernel_path:
        with fits.open(kernel_path, memmap=False) as kh:
            khead = kh[0].header.copy()
            for hdu in kh[1:]:
                if isinstance(hdu, fits.BinTableHDU):
                    table = (hdu.data.copy(), hdu.header.copy())
        for key in khead:
            if key.startswith(("REGION", "CONVOL")) and key not in header:
                header[key] = khead[key]
    if stamps_path and os.path.exists(stamps_path):
        out.stamps = read_stamps(stamps_path)
        header["NSTAMPS"] = (len(out.stamps), "Stamps used (from -savexy)")
    if table is not None and "KSUM00" in header:
        data, thead = table
        opts = dict(options or _command_options(header))
        from diffgui.engine.alard_lupton import SpatialKernel

        out.kernel = SpatialKernel.from_table(
            data, thead, header, diff.shape, nsx=int(opts.get("nsx", 10)),
            nsy=int(opts.get("nsy", 10)), nrx=opts.get("nrx"), nry=opts.get("nry"),
            rss=opts.get("rss"))
    return out


# ---- failures ------------------------------------------------------------------------------

_FATAL = re.compile(r"^\s*(FATAL|ERROR)\b|Segmentation fault|core dumped|cannot allocate",
                    re.IGNORECASE)


def _fatal_lines(text):
    return [ln.strip() for ln in text.splitlines() if _FATAL.search(ln)]


def _tail(text, n=8):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def check_process(proc: ProcessResult):
    """Raise :class:`ExecutableError` for a crash, a non-zero exit or a FATAL message."""
    text = proc.stderr + "\n" + proc.stdout
    fatal = _fatal_lines(text)
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        raise ExecutableError(f"HOTPANTS crashed ({sig}). Last output:\n{_tail(text)}")
    if proc.returncode != 0:
        msg = fatal[0] if fatal else _tail(text)
        raise ExecutableError(f"HOTPANTS failed with exit code {proc.returncode}: {msg}")
    if fatal:
        raise ExecutableError(f"HOTPANTS reported an error: {fatal[0]}")


def _threshold_reasons(image, template, options):
    out = []
    options = options or {}
    for name, data, p in (("template", template, "t"), ("science image", image, "i")):
        if data is None:
            continue
        lo = float(options.get(p + "l", 0.0))
        hi = float(options.get(p + "u", 25000.0))
        d = np.asarray(data)[::3, ::3]
        d = d[np.isfinite(d)]
        if d.size == 0:
            continue
        low = float(np.mean(d <= lo))
        high = float(np.mean(d >= hi))
        if low > 0.2:
            out.append(f"{100 * low:.0f}% of the {name} pixels are at or below the lower "
                       f"threshold {p}l={lo:g} (median {float(np.median(d)):.3g}): for "
                       f"background-subtracted data give a negative {p}l and a noise map")
        if high > 0.2:
            out.append(f"{100 * high:.0f}% of the {name} pixels are at or above the upper "
                       f"threshold {p}u={hi:g}")
    return out


def diagnose_no_stamps(stderr="", image=None, template=None, options=None) -> str:
    """Why HOTPANTS found no kernel stamps, as far as can be told."""
    reasons = _threshold_reasons(image, template, options)
    m = re.findall(r"(\d+) and (\d+) stamps built", stderr or "") or \
        re.findall(r"(\d+) stamps built", stderr or "")
    built = f" (its log says: '{m[-1] if isinstance(m[-1], str) else ' and '.join(m[-1])} stamps built')" \
        if m else ""
    good = re.findall(r"Good (templ|image) data : ([-\d.e+]+) -> ([-\d.e+]+)", stderr or "")
    if not reasons and good:
        rng = "; ".join(f"{w} {a} .. {b}" for w, a, b in good)
        reasons.append(f"the valid data ranges were {rng}")
    if not reasons:
        reasons.append("no star was found above the stamp threshold ft (star-free images, "
                       "or everything masked)")
    return ("HOTPANTS found no usable kernel stamps and wrote an empty (all-zero) "
            "difference although it exited with code 0" + built + ": " + "; ".join(reasons) + ".")


def check_outputs(out: HotpantsOutputs, *, stderr="", image=None, template=None,
                  options=None) -> HotpantsOutputs:
    """Raise :class:`ExecutableError` when the outputs are HOTPANTS's silent failure.

    A run without stamps exits with code 0 and writes an all-zero
    difference without KSUMnn/CONVOLnn keywords; any of those signs is
    reported with the reason (see :func:`diagnose_no_stamps`).
    """
    h = out.header
    nreg = int(h.get("NREGION", 1) or 1)
    missing = [k for k in range(nreg) if f"KSUM{k:02d}" not in h]
    finite = np.isfinite(out.diff)
    fill = float(h.get("MASKVAL", 1e-30))
    empty = not np.any((out.diff != 0) & (out.diff != np.float32(fill)) & finite)
    if missing or empty:
        why = diagnose_no_stamps(stderr, image, template, options)
        if missing and len(missing) < nreg:
            why = (f"HOTPANTS found no stamps in region(s) {missing} of {nreg}: those parts "
                   "of the difference are empty. " + why.split(": ", 1)[-1])
        raise ExecutableError(why)
    if not finite.all():
        raise ExecutableError("HOTPANTS wrote non-finite values in the difference image: "
                              "the fit was corrupted (unmasked NaNs or a singular kernel).")
    return out


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
    if workdir is not None:
        wd = os.fspath(workdir)
        os.makedirs(wd, exist_ok=True)
        cleanup = False
    else:
        if tmpdir is not None:
            os.makedirs(os.fspath(tmpdir), exist_ok=True)
        wd = tempfile.mkdtemp(prefix="diffgui_hotpants_", dir=tmpdir)
        cleanup = True
    try:
        check_cancel(cancel)
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
        opts = _absolute_paths(options or {})
        if "ssf" in files:
            opts.pop("ssf", None)
        argv = build_argv({**files, **opts}, exe)
        log("running: " + " ".join(shlex.quote(a) for a in argv))
        with open(os.path.join(wd, "command.txt"), "w") as fh:
            fh.write(" ".join(shlex.quote(a) for a in argv) + "\n")
        proc = run_process(argv, wd, log=log, cancel=cancel, timeout=timeout)
        check_process(proc)
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
        check_outputs(out, stderr=proc.stderr + proc.stdout, image=image, template=template,
                      options=opts)
        return out
    finally:
        if cleanup:
            shutil.rmtree(wd, ignore_errors=True)


# ---- after the run ---------------------------------------------------------------------------

def residual_gradient(diff, noise, mask, npix=200_000):
    """Amplitude (in units of the median noise) of a plane fitted to the
    difference over good pixels, edge to edge: a large value means a
    differential sky gradient that bgo=0 did not remove."""
    step = max(1, int(math.sqrt(diff.size / npix)))
    d = diff[::step, ::step]
    n = noise[::step, ::step] if noise is not None else None
    ok = np.isfinite(d)
    if mask is not None:
        ok &= ~mask[::step, ::step]
    if n is not None:
        ok &= n > 0
    if ok.sum() < 50:
        return 0.0
    yy, xx = np.nonzero(ok)
    v = d[ok]
    med = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - med)) or 1.0
    keep = np.abs(v - med) < 3 * mad
    A = np.stack([np.ones(keep.sum()), xx[keep] / d.shape[1] - 0.5, yy[keep] / d.shape[0] - 0.5], 1)
    coef = np.linalg.lstsq(A, v[keep], rcond=None)[0]
    scale = float(np.median(n[ok])) if n is not None else mad
    return float(np.hypot(coef[1], coef[2]) / scale) if scale > 0 else 0.0
