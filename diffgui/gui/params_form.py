"""Parameter forms generated from the engine's parameter specs (``engine/params.py``).

One pyqtgraph ParameterTree per method: the common parameters first, then one
collapsed group per spec group, and for HOTPANTS every command-line option of
the ``extra`` dict in collapsed groups. Numbers that may be None, tuples, lists
and paths are text fields parsed by ``params.coerce``; every change is checked
with ``params.validate`` and bad fields are painted red with the reason in
their tooltip; changed fields get a ``*`` after their name.
"""

from __future__ import annotations

from pyqtgraph.parametertree import Parameter, ParameterTree
from PyQt6 import QtCore, QtGui, QtWidgets

from diffgui.app import methods as registry

__all__ = ["ParamsForm", "spec_to_param", "format_value"]

EXTRA = "extra"
_HIDDEN_PREFIX = "get_"  # output flags: the app always asks for every output
_BAD = QtGui.QBrush(QtGui.QColor(255, 120, 120, 110))
_OK = QtGui.QBrush()


def format_value(value) -> str:
    """Text of a value in a text field (None -> '')."""
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, dict):
        import json
        return json.dumps(value)
    return str(value)


def _tip(spec, extra_note: str = "") -> str:
    parts = [spec.help]
    if spec.unit:
        parts.append(f"unit: {spec.unit}")
    if spec.bounds:
        lo, hi = spec.bounds
        op = "<" if spec.min_exclusive else "<="
        parts.append("range: " + (f"{lo} {op} " if lo is not None else "") + "value"
                     + (f" <= {hi}" if hi is not None else ""))
    if spec.choices:
        parts.append("choices: " + ", ".join(map(str, spec.choices)))
    parts.append(f"default: {format_value(spec.default) or 'None'}")
    if spec.nullable:
        parts.append("empty = None")
    if extra_note:
        parts.append(extra_note)
    return "\n".join(p for p in parts if p)


def _kind(spec) -> str:
    """pyqtgraph parameter type of a spec: 'bool', 'list', 'int' or 'str'.

    HOTPANTS options (``spec.flag``) are text fields so that empty means "not passed".
    """
    if spec.type == "bool" and not spec.nullable:
        return "bool"
    if spec.type == "choice":
        return "list"
    if spec.type == "int" and not spec.nullable and not spec.flag:
        return "int"
    return "str"


def spec_to_param(spec, *, option: bool = False) -> dict:
    """Parameter-tree child dict for one ParamSpec (``option``: a HOTPANTS extra option)."""
    kind = _kind(spec)
    note = ""
    if option and spec.wrapper == "fixed":
        note = "set by diffgui itself (read-only)"
    elif option and spec.wrapper == "derived":
        note = "empty = computed by run_hotpants from the data"
    elif option:
        note = "empty = not passed (HOTPANTS default)"
    default = None if option and kind != "bool" else spec.default
    d = {"name": spec.name, "title": spec.name, "type": kind, "tip": _tip(spec, note),
         "readonly": option and spec.wrapper == "fixed"}
    if kind == "bool":
        d["value"] = d["default"] = bool(spec.default)
    elif kind == "list":
        choices = list(spec.choices)
        if option or spec.nullable:
            choices = [""] + choices
        val = "" if default is None else str(default)
        d.update(limits=choices, value=val, default=val)
    elif kind == "int":
        lo, hi = spec.bounds or (None, None)
        d.update(value=int(default), default=int(default), limits=(lo, hi), step=1)
    else:
        d["value"] = d["default"] = format_value(default)
    if spec.unit:
        d["title"] = f"{spec.name} [{spec.unit}]"
    return d


class ParamsForm(QtWidgets.QWidget):
    """A parameter form for one method at a time.

    Signals
    -------
    changed()
        Any value changed.
    validityChanged(bool)
        The values became valid (True) or invalid (False).
    """

    changed = QtCore.pyqtSignal()
    validityChanged = QtCore.pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.tree = ParameterTree(showHeader=False)
        lay.addWidget(self.tree, 1)
        self.problem_label = QtWidgets.QLabel("")
        self.problem_label.setWordWrap(True)
        self.problem_label.setStyleSheet("color: #d04040;")
        lay.addWidget(self.problem_label)
        self.method = None
        self.specs = {}
        self.option_specs = {}
        self.root = None
        self._problems = {}
        self._updating = False

    # ---- building ---------------------------------------------------------------------
    def set_method(self, name: str) -> None:
        """Rebuild the form for method ``name`` with its defaults."""
        info = registry.get(name)
        self.method = info.name
        specs = [s for s in info.param_specs() if s.editable and not s.name.startswith(_HIDDEN_PREFIX)]
        self.specs = {s.name: s for s in specs}
        children = []
        common = [spec_to_param(s) for s in specs if s.common and s.type != "dict"]
        children.append({"name": "Common", "type": "group", "children": common})
        groups = {}
        for s in specs:
            if s.common or s.type == "dict":
                continue
            groups.setdefault(s.group, []).append(spec_to_param(s))
        for g, kids in groups.items():
            children.append({"name": g, "type": "group", "children": kids, "expanded": False})
        self.option_specs = {}
        if EXTRA in self.specs:
            children.append(self._extra_group())
        self.root = Parameter.create(name="params", type="group", children=children)
        self.root.sigTreeStateChanged.connect(self._on_tree_changed)
        self.tree.setParameters(self.root, showTop=False)
        header = self.tree.header()
        header.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self._refresh()

    def _extra_group(self) -> dict:
        from diffgui.engine import params

        groups = {}
        for s in params.hotpants_option_specs(include_fixed=True):
            self.option_specs[s.name] = s
            groups.setdefault(s.group, []).append(spec_to_param(s, option=True))
        kids = [{"name": f"{EXTRA}:{g}", "title": g, "type": "group", "children": c, "expanded": False}
                for g, c in groups.items()]
        return {"name": EXTRA, "title": "HOTPANTS options (extra)", "type": "group", "children": kids,
                "expanded": False, "tip": self.specs[EXTRA].help}

    # ---- access -----------------------------------------------------------------------
    def _params(self):
        """Yield ``(param, spec, is_option)`` for every editable leaf."""
        if self.root is None:
            return
        stack = list(self.root.children())
        while stack:
            p = stack.pop(0)
            if p.type() == "group":
                stack[0:0] = p.children()
                continue
            opt = p.parent() is not None and p.parent().name().startswith(EXTRA + ":")
            spec = self.option_specs.get(p.name()) if opt else self.specs.get(p.name())
            if spec is not None:
                yield p, spec, opt

    def _parse(self, p, spec, opt):
        """Value of a field; raises ParamError for unparsable text."""
        from diffgui.engine import params

        v = p.value()
        kind = _kind(spec)
        if kind == "bool":
            return bool(v) if not opt else (True if v else None)
        if kind == "int":
            return int(v)
        if kind == "list" and v == "":
            return None
        return params.coerce(spec, v)

    def values(self, *, strict: bool = False) -> dict:
        """Current values by parameter name (HOTPANTS options collected in ``extra``).

        Fields that cannot be parsed are left out, or raise ParamError with ``strict``.
        """
        from diffgui.engine import params

        out, problems = self._collect()
        if strict and problems:
            raise params.ParamError("Invalid parameter text", problems)
        return out

    def _collect(self) -> tuple[dict, dict]:
        """``(values, problems)``: parsed fields and ``{field: message}`` of unparsable ones."""
        from diffgui.engine import params

        out, extra, problems = {}, {}, {}
        for p, spec, opt in self._params():
            if opt and p.opts.get("readonly"):
                continue
            try:
                v = self._parse(p, spec, opt)
            except params.ParamError as exc:
                problems.update(exc.problems)
                continue
            if opt:
                if v is not None:
                    extra[spec.name] = v
            else:
                out[spec.name] = v
        if EXTRA in self.specs:
            out[EXTRA] = extra or None
        return out, problems

    def validated(self) -> dict:
        """Values checked by ``params.validate`` (raises ParamError naming every bad field)."""
        from diffgui.engine import params

        vals, problems = self._collect()
        if self.method in params.METHODS:
            try:
                vals = params.validate(self.method, vals)
            except params.ParamError as exc:
                problems = {**exc.problems, **problems}
        if problems:
            raise params.ParamError(f"Invalid {self.method} parameters", problems)
        return vals

    def set_values(self, values: dict) -> None:
        """Put values into the form (a preset); unknown names are ignored."""
        self._updating = True
        try:
            extra = dict(values.get(EXTRA) or {})
            for p, spec, opt in self._params():
                if opt:
                    if spec.name in extra:
                        p.setValue(self._to_widget(spec, extra[spec.name], True))
                elif spec.name in values:
                    p.setValue(self._to_widget(spec, values[spec.name], False))
        finally:
            self._updating = False
        self._refresh()

    @staticmethod
    def _to_widget(spec, value, opt):
        kind = _kind(spec)
        if kind == "bool":
            return bool(value)
        if kind == "int":
            return int(value)
        if kind == "list":
            return "" if value is None else str(value)
        return format_value(value)

    def reset_defaults(self) -> None:
        """Every field back to its default."""
        self._updating = True
        try:
            for p, spec, opt in self._params():
                p.setToDefault()
        finally:
            self._updating = False
        self._refresh()

    def changed_names(self) -> list:
        """Names of the fields whose value differs from the default (options as ``extra.x``)."""
        return [("extra." if opt else "") + spec.name for p, spec, opt in self._params()
                if not p.valueIsDefault()]

    def problems(self) -> dict:
        """``{field: message}`` of the current invalid fields (empty when valid)."""
        return dict(self._problems)

    def is_valid(self) -> bool:
        return not self._problems

    # ---- checking and marking ---------------------------------------------------------
    def _on_tree_changed(self, *args) -> None:
        if not self._updating:
            self._refresh()
            self.changed.emit()

    def _refresh(self) -> None:
        from diffgui.engine import params

        was_valid = not self._problems
        problems = {}
        try:
            self.validated()
        except params.ParamError as exc:
            problems = dict(exc.problems)
        except Exception as exc:  # a spec the validator does not know: report, don't crash
            problems = {"form": str(exc)}
        self._problems = problems
        self._updating, updating = True, self._updating
        for p, spec, opt in self._params():
            key = ("extra." if opt else "") + spec.name
            msg = problems.get(key)
            changed = not p.valueIsDefault()
            title = p.opts.get("title") or p.name()
            base = title.rstrip(" *")
            new_title = base + (" *" if changed else "")
            if new_title != title:
                p.setOpts(title=new_title)
            for item in list(p.items):
                for col in (0, 1):
                    item.setBackground(col, _BAD if msg else _OK)
                item.setToolTip(0, f"{msg}\n\n{p.opts.get('tip', '')}" if msg else p.opts.get("tip", ""))
        self._updating = updating
        text = "\n".join(f"{k}: {v}" for k, v in problems.items())
        self.problem_label.setText(text)
        self.problem_label.setVisible(bool(text))
        if was_valid != (not problems):
            self.validityChanged.emit(not problems)

    def param(self, name: str):
        """The pyqtgraph Parameter of a field (``'extra.r'`` for a HOTPANTS option)."""
        opt = name.startswith(EXTRA + ".")
        key = name[len(EXTRA) + 1:] if opt else name
        for p, spec, o in self._params():
            if o == opt and spec.name == key:
                return p
        raise KeyError(name)
