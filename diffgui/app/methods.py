"""Registry of subtraction methods: what exists, whether it can run here, and how to call it.

The GUI, the CLI and batch runs ask this module which methods are available
instead of hard-coding them. A method is *available* only when its engine
function is really implemented (not the ``NotImplementedError`` stub) and its
algorithm module imports; an unavailable method is listed with the reason, never
replaced by something fake.

Tests and plug-ins add methods with :func:`register` (and remove them with
:func:`unregister`); a :class:`MethodInfo` may carry its own ``func`` and ``specs``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import shutil
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from diffgui.engine.errors import FitError, InputError

__all__ = ["MethodInfo", "register", "unregister", "get", "names", "all_methods", "available", "OUTPUT_TITLES"]

#: Human titles of every output a method may produce (keys of ``Run.results``).
OUTPUT_TITLES = {
    "diff": "Difference", "scorr": "S_corr", "convolved": "Convolved template",
    "scaled": "Scaled difference", "noise": "Difference noise", "kernel": "Kernel",
    "psf": "Difference PSF", "fpsf": "F_psf", "fpsf_err": "F_psf error", "header": "Header",
    "image_psf": "Science PSF", "template_psf": "Template PSF",
}

#: Input names of a Pair that a method function receives from the Pair, never from the form.
PAIR_INPUTS = ("image", "template", "mask", "template_mask", "err", "template_err")


@dataclass
class MethodInfo:
    """How to find, check and call one subtraction method.

    Attributes
    ----------
    name : str
        Registry key, lower case (``'zogy'``); also the name used by ``engine.params``.
    label : str
        Name shown to users (``'ZOGY'``).
    function : str
        Attribute of :mod:`diffgui.engine.api` holding the engine function.
    modules : tuple of str
        Engine modules of which at least one must import for the method to run.
    flags : dict
        Keyword arguments that make the function return every output the app shows.
    outputs : tuple of str
        Names of the items of the returned list, in order (keys of :data:`OUTPUT_TITLES`).
    func : callable, optional
        Use this function instead of looking one up (tests, plug-ins).
    specs : callable, optional
        Returns the parameter specs; default ``engine.params.method_specs(name)``.
    extra_check : callable, optional
        Returns ``(ok, reason)``; an additional availability test.
    details : callable, optional
        ``details(info, shape) -> dict`` of extra outputs, from the ``_result`` dict the
        engine function fills with its intermediate products (ZOGY's two PSFs).
    """

    name: str
    label: str
    function: str = ""
    modules: tuple = ()
    flags: dict = field(default_factory=dict)
    outputs: tuple = ("diff",)
    func: Optional[Callable] = None
    specs: Optional[Callable] = None
    extra_check: Optional[Callable] = None
    details: Optional[Callable] = None

    def resolve(self) -> Callable:
        """The engine function (raises ImportError/AttributeError when missing)."""
        if self.func is not None:
            return self.func
        mod = importlib.import_module("diffgui.engine.api")
        return getattr(mod, self.function)

    def availability(self) -> tuple[bool, str]:
        """``(True, '')`` when the method can run here, else ``(False, reason)``."""
        try:
            fn = self.resolve()
        except Exception as exc:
            return False, f"engine function missing: {exc}"
        if _is_stub(fn):
            return False, f"{self.label} is not implemented in this version of the engine yet"
        if self.modules and not any(_module_exists(m) for m in self.modules):
            return False, f"engine module {' or '.join(self.modules)} is missing"
        if self.extra_check is not None:
            return self.extra_check()
        return True, ""

    @property
    def available(self) -> bool:
        return self.availability()[0]

    def param_specs(self) -> list:
        """Parameter specs of this method (empty when ``engine.params`` is missing)."""
        if self.specs is not None:
            return list(self.specs())
        try:
            from diffgui.engine import params
        except ImportError:
            return []
        return list(params.method_specs(self.name))

    def accepted_kwargs(self) -> Optional[set]:
        """Keyword names the function accepts, or None if it takes ``**kwargs``."""
        try:
            sig = inspect.signature(self.resolve())
        except (TypeError, ValueError, ImportError, AttributeError):
            return None
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        return set(sig.parameters)

    def call(self, inputs: dict, params: dict, *, verbose=None, cancel=None) -> dict:
        """Run the method and return its outputs by name.

        Parameters
        ----------
        inputs : dict
            Arrays from :meth:`diffgui.app.pair.Pair.engine_inputs`.
        params : dict
            Parameter values (``get_*`` flags and pair inputs in it are ignored).
        verbose : callable, optional
            Receives log lines.
        cancel : callable, optional
            Returns True when the run must stop.

        Returns
        -------
        dict
            ``{'diff': ndarray, 'scorr': ..., ...}`` following :attr:`outputs`.
        """
        fn = self.resolve()
        params = dict(params)
        try:
            from diffgui.engine import params as specs

            if self.name in specs.METHODS:
                params = specs.call_kwargs(self.name, params)
        except ImportError:
            pass
        drop = ("verbose", "cancel")
        kwargs = {k: v for k, v in params.items()
                  if k not in PAIR_INPUTS and k not in drop and not k.startswith("get_")}
        for key in ("err", "template_err"):  # a form may ask the engine to build noise maps
            if inputs.get(key) is None and params.get(key) is True:
                inputs = {**inputs, key: True}
        kwargs.update(self.flags)
        accepted = self.accepted_kwargs()
        if verbose is not None:
            kwargs["verbose"] = verbose
        if cancel is not None and (accepted is None or "cancel" in accepted):
            kwargs["cancel"] = cancel
        if accepted is not None:
            unknown = sorted(set(kwargs) - accepted)
            if unknown:
                raise InputError(f"{self.label} does not accept parameter(s): {', '.join(unknown)}")
        info = {}
        if self.details is not None:
            kwargs["_result"] = info
        out = fn(**inputs, **kwargs)
        results = self.parse(out)
        if self.details is not None:
            try:
                results.update(self.details(info, np.shape(inputs.get("image"))))
            except Exception as exc:  # extras must never cost the run itself
                if verbose is not None:
                    verbose(f"{self.label}: extra outputs unavailable ({exc})")
        return results

    def parse(self, out) -> dict:
        """Name the items of an engine return value."""
        if out is None:
            raise FitError(f"{self.label} produced no result (None): see the log for why.")
        if isinstance(out, dict):
            return dict(out)
        if isinstance(out, np.ndarray):
            return {"diff": out}
        items = list(out)
        return {name: val for name, val in zip(self.outputs, items)}


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _is_stub(fn) -> bool:
    """True for a function whose whole body is ``raise NotImplementedError(...)``."""
    import ast
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def _hotpants_check() -> tuple[bool, str]:
    if _module_exists("diffgui.engine.alard_lupton"):
        return True, ""
    if shutil.which("hotpants"):
        return True, ""
    return False, "neither the native Alard-Lupton backend nor a hotpants executable is installed"


_REGISTRY: dict[str, MethodInfo] = {}


def register(info: MethodInfo, *, replace: bool = False) -> MethodInfo:
    """Add a method to the registry (``replace=True`` to overwrite one)."""
    if info.name in _REGISTRY and not replace:
        raise ValueError(f"method {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def unregister(name: str) -> None:
    """Remove a method (tests remove their fakes this way)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> MethodInfo:
    """The method called ``name`` (case-insensitive); InputError listing the known ones."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; known methods: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def names() -> list[str]:
    """Names of every registered method, available or not."""
    return list(_REGISTRY)


def all_methods() -> list[MethodInfo]:
    return list(_REGISTRY.values())


def available() -> list[str]:
    """Names of the methods that can run here."""
    return [m.name for m in _REGISTRY.values() if m.available]


def _zogy_psfs(info: dict, shape) -> dict:
    """ZOGY's science and template PSFs at the image centre (stamps for the panels)."""
    from diffgui.engine.psf import get_psf_stamp

    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    return {f"{k}": np.asarray(get_psf_stamp(info[k], cx, cy), dtype=float)
            for k in ("image_psf", "template_psf") if info.get(k) is not None}


register(MethodInfo(
    "zogy", "ZOGY", "run_zogy", modules=("diffgui.engine.zogy",),
    flags={"get_psf": True, "get_Fpsf": True}, outputs=("diff", "scorr", "psf", "fpsf", "fpsf_err"),
    details=_zogy_psfs))
register(MethodInfo(
    "sfft", "SFFT", "run_sfft", modules=("diffgui.engine.sfft",),
    flags={"get_convolved": True, "get_scaled": True, "get_noise": True, "get_kernel": True},
    outputs=("diff", "convolved", "scaled", "noise", "kernel")))
register(MethodInfo(
    "hotpants", "HOTPANTS", "run_hotpants", modules=("diffgui.engine.hotpants", "diffgui.engine.alard_lupton"),
    flags={"get_convolved": True, "get_scaled": True, "get_noise": True, "get_kernel": True, "get_header": True},
    outputs=("diff", "convolved", "scaled", "noise", "kernel", "header"), extra_check=_hotpants_check))
