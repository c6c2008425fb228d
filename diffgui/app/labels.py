"""Label files of vetting: where they live, the store that rewrites them after every label,
and exports of candidates with their labels (CSV, DS9 regions). No Qt.

A :class:`LabelStore` rewrites its ECSV or CSV file atomically (synced temporary file,
then rename) after every change, so a crash never loses a label that was given.
Several stores (two windows, two programs) may share one file: every write
re-reads the file under an exclusive lock (``fcntl.flock`` on the folder that
holds it: the file itself is replaced at every write, and a lock file would be
litter beside the data) and merges by candidate key, so no store
loses the labels another one wrote. Rows with labels this version does not
give (``bogus_subtract``, ``Real``) and extra columns are kept as they are.
:func:`labels_path_for` puts the file beside the science image (or in the user's data
folder when that is read-only), so labels come back when the pair is opened again.
Coordinates in tables are 0-based pixel centres; DS9 region files are 1-based.
"""

from __future__ import annotations

import contextlib
import csv
import getpass
import hashlib
import io
import os
import re
from datetime import datetime, timezone
from typing import Optional

import numpy as np
from astropy.table import Table

from diffgui.engine.errors import InputError

__all__ = ["LABELS", "LabelStore", "labels_path_for", "user_data_dir", "read_labels", "labels_text",
           "export_table", "export_csv", "export_regions", "write_text_atomic"]

#: Labels a vetter can give (None = unlabelled).
LABELS = ("real", "bogus", "skip")


def _float(v, default=np.nan) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f


def _int(v, default=0) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return default


# ---- label files ----------------------------------------------------------------------------

def user_data_dir() -> str:
    """Folder for diffgui's own files (``$DIFFGUI_DATA_DIR`` or the XDG data folder)."""
    base = os.environ.get("DIFFGUI_DATA_DIR")
    if not base:
        xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        base = os.path.join(xdg, "diffgui")
    return base


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("_")[:80] or "pair"


def _stem(path: str) -> str:
    b = os.path.basename(path)
    for ext in (".fits.fz", ".fits.gz", ".fit.gz", ".fits", ".fit", ".fts", ".fz"):
        if b.lower().endswith(ext):
            return b[: -len(ext)]
    return os.path.splitext(b)[0]


def _writable(folder: str) -> bool:
    """True for a folder we may write in; folders without the owner's write bit count as
    read-only even for root (shared data folders are marked that way)."""
    import stat

    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & stat.S_IWUSR) and os.access(folder, os.W_OK | os.X_OK)


def labels_path_for(pair=None, results_path=None, ext: str = ".labels.ecsv") -> str:
    """Where the labels of a pair (or of a results file) are kept.

    Beside a saved results file: ``<results stem>.labels.ecsv``. Beside the
    science image: ``<science stem>--<template stem>.labels.ecsv`` when its folder
    is writable. Otherwise (read-only data, simulated or demo pairs) in
    ``<user data>/labels/`` under a name with a hash of the input paths (or of the
    pixels, for pairs without files), so the same pair always finds its labels.
    """
    if results_path:
        folder = os.path.dirname(os.path.abspath(results_path))
        return os.path.join(folder, _stem(results_path) + ext)
    if pair is None:
        raise InputError("labels_path_for needs a pair or a results path")
    ipath, tpath = getattr(pair, "image_path", None), getattr(pair, "template_path", None)
    if ipath and tpath:
        name = f"{_stem(ipath)}--{_stem(tpath)}"
        folder = os.path.dirname(os.path.abspath(ipath))
        if _writable(folder):
            return os.path.join(folder, name + ext)
        ident = (os.path.abspath(ipath) + "\n" + os.path.abspath(tpath)).encode()
    else:
        name = _safe(getattr(pair, "name", "pair"))
        h = hashlib.sha1()
        for arr in (pair.image, pair.template):
            a = np.ascontiguousarray(arr)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        ident = h.digest()
    digest = hashlib.sha1(ident).hexdigest()[:10]
    return os.path.join(user_data_dir(), "labels", f"{_safe(name)}-{digest}{ext}")


def write_text_atomic(path, text: str, *, overwrite: bool = True) -> str:
    """Write ``text`` to ``path`` via a synced temporary file and a rename
    (:func:`diffgui.app.atomic.write_text_atomic`)."""
    from .atomic import write_text_atomic as _write

    return _write(path, text, overwrite=overwrite)


_LABEL_FIELDS = ("key", "label", "x", "y", "ra", "dec", "sign", "snr", "score", "time", "user", "preset_hash")
_FLOAT_FIELDS = ("x", "y", "ra", "dec", "snr", "score")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # containers without a login name
        return ""


class LabelStore:
    """Labels of the items of one vetting source, saved to a file after every change.

    Parameters
    ----------
    path : str
        ``.ecsv`` or ``.csv`` file; read if it exists, created on the first label.
    user : str, optional
        Recorded with each label (default: the login name).
    preset_hash : str
        Hash of the preset the candidates came from, recorded with each label.

    Notes
    -----
    Labels whose items are not in the current source (candidates of another run)
    are kept and written back, never dropped, and so are labels other than
    :data:`LABELS` found in the file. Undo history lives in memory.

    Each :meth:`save` re-reads the file under a lock and merges: keys this
    store changed since its last save take this store's value unless the file
    holds a newer one; every other key takes the file's value (labels given
    meanwhile by another store on the same file appear here).
    """

    def __init__(self, path, *, user: Optional[str] = None, preset_hash: str = ""):
        self.path = os.fspath(path)
        self.user = _user() if user is None else user
        self.preset_hash = preset_hash or ""
        self.records: dict = {}
        self.history: list = []
        self._dirty: dict = {}      # key -> time of this store's unsaved change
        if os.path.exists(self.path):
            self.records = read_labels(self.path)

    # ---- queries ------------------------------------------------------------------------
    def label(self, key: str) -> Optional[str]:
        """The label of ``key`` as written in the file (None when unlabelled)."""
        rec = self.records.get(key)
        return (rec["label"] or None) if rec else None

    def __contains__(self, key) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def counts(self, keys=None) -> dict:
        """``{'real': n, 'bogus': n, 'skip': n}`` over ``keys`` (default all)."""
        out = dict.fromkeys(LABELS, 0)
        for k, rec in self.records.items():
            if (keys is None or k in keys) and rec["label"]:
                out[rec["label"]] = out.get(rec["label"], 0) + 1
        return out

    # ---- changes ------------------------------------------------------------------------
    def attach(self, source) -> int:
        """Re-key stored labels to ``source``'s keys (labels made on an earlier run of the
        same pair find their candidates again); returns how many matched."""
        mapping = source.match(self.records)
        if not mapping:
            return 0
        moved = {}
        now = _now()
        for old, new in mapping.items():
            rec = dict(self.records[old], key=new)
            moved[new] = rec
            if old != new:
                self._dirty[old] = self._dirty[new] = now
        rest = {k: v for k, v in self.records.items() if k not in mapping and k not in moved}
        self.records = {**rest, **moved}
        if any(old != new for old, new in mapping.items()):
            self.save()
        return len(mapping)

    def set(self, key: str, label: Optional[str], info: Optional[dict] = None) -> None:
        """Give ``key`` a label (None clears it) and save; remembered for :meth:`undo`."""
        if label is not None and label not in LABELS:
            raise InputError(f"unknown label {label!r}; use one of {', '.join(LABELS)}")
        prev = self.records.get(key)
        self.history.append((key, None if prev is None else dict(prev)))
        self._dirty[key] = _now()
        if label is None:
            self.records.pop(key, None)
        else:
            rec = {f: "" for f in _LABEL_FIELDS}
            for f in _FLOAT_FIELDS:
                rec[f] = np.nan
            rec["sign"] = 0
            rec.update({k: v for k, v in (info or {}).items() if k in _LABEL_FIELDS})
            rec.update(key=key, label=label, time=_now(), user=self.user, preset_hash=self.preset_hash)
            self.records[key] = rec
        self.save()

    def undo(self) -> Optional[str]:
        """Revert the last change and save; returns its key (None when nothing to undo)."""
        if not self.history:
            return None
        key, prev = self.history.pop()
        self._dirty[key] = _now()
        if prev is None:
            self.records.pop(key, None)
        else:
            self.records[key] = prev
        self.save()
        return key

    def save(self) -> str:
        """Merge with the file and write every label to :attr:`path` atomically
        (ECSV or CSV by extension), under the file's lock.

        Raises
        ------
        InputError
            The file was replaced by something that is not a label file (it
            is left alone; nothing is written).
        """
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with _locked(self.path):
            if os.path.exists(self.path):
                self.records = self._merged(read_labels(self.path))
            out = write_text_atomic(self.path, labels_text(self.records, self.path))
            self._dirty.clear()
        return out

    def reload(self) -> None:
        """Take the labels other stores wrote to the file since the last save
        (this store's unsaved changes win)."""
        if os.path.exists(self.path):
            with _locked(self.path):
                self.records = self._merged(read_labels(self.path))

    def _merged(self, disk: dict) -> dict:
        merged = dict(disk)
        for key, changed in self._dirty.items():
            theirs = disk.get(key)
            if theirs is not None and str(theirs.get("time", "")) > changed:
                continue                      # changed on disk after our change
            mine = self.records.get(key)
            if mine is None:
                merged.pop(key, None)
            else:
                merged[key] = mine
        return merged


@contextlib.contextmanager
def _locked(path):
    """Exclusive lock of a label file, taken on its folder (Linux and macOS flock
    directories; writes of other label files in that folder wait a few ms).
    A no-op where ``fcntl`` does not exist or the folder cannot be opened."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)       # releases the lock


def labels_text(records: dict, path: str = ".ecsv") -> str:
    """The text of a label file (ECSV unless ``path`` ends in ``.csv``)."""
    rows = list(records.values())
    fields = list(_LABEL_FIELDS)
    for r in rows:
        fields += [k for k in r if k not in fields]       # columns of other tools, kept
    if str(path).lower().endswith(".csv"):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k, "")) for k in fields})
        return buf.getvalue()
    cols = {}
    for f in fields:
        vals = [r.get(f, "") for r in rows]
        if f not in _LABEL_FIELDS:
            cols[f] = _extra_column(vals)
        elif f in _FLOAT_FIELDS:
            cols[f] = np.array([_float(v) for v in vals], dtype=float)
        elif f == "sign":
            cols[f] = np.array([_int(v) for v in vals], dtype=np.int32)
        else:
            cols[f] = np.array([str(v) for v in vals], dtype=str) if vals else np.zeros(0, dtype="U1")
    t = Table(cols)
    t.meta["comments"] = ["diffgui vetting labels: real / bogus / skip; x, y are 0-based pixels"]
    buf = io.StringIO()
    t.write(buf, format="ascii.ecsv")
    return buf.getvalue()


def _extra_column(vals):
    """An extra column for ECSV: numbers stay numbers, anything else is text."""
    if vals and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                    for v in vals):
        return np.array(vals)
    return np.array([str(v) for v in vals], dtype=str) if vals else np.zeros(0, dtype="U1")


def _csv_value(v):
    if isinstance(v, float):
        return "" if not np.isfinite(v) else repr(v)
    return v


def read_labels(path) -> dict:
    """Read a label file written by :class:`LabelStore`: ``{key: record}``.

    Every row with a key is kept, whatever its label (``bogus_subtract`` from
    another tool stays ``bogus_subtract``), with any extra columns.

    Raises
    ------
    InputError
        When the file is not a label file (no ``key`` and ``label`` columns).
    """
    path = os.fspath(path)
    try:
        if path.lower().endswith(".csv"):
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            fields = set(rows[0]) if rows else {"key", "label"}
            if rows and not {"key", "label"} <= fields:
                raise InputError(f"{path} is not a diffgui label file (no 'key' and 'label' columns).")
        else:
            t = Table.read(path, format="ascii.ecsv")
            if not {"key", "label"} <= set(t.colnames):
                raise InputError(f"{path} is not a diffgui label file (no 'key' and 'label' columns).")
            rows = [{c: t[c][i] for c in t.colnames} for i in range(len(t))]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read the label file {path}: {exc}") from None
    out = {}
    for r in rows:
        rec = {f: r.get(f, "") for f in _LABEL_FIELDS}
        rec.update({c: v for c, v in r.items() if c not in rec and c is not None})
        for f in _FLOAT_FIELDS:
            rec[f] = _float(rec[f])
        rec["sign"] = _int(rec["sign"])
        for f in ("key", "label", "time", "user", "preset_hash"):
            rec[f] = "" if rec[f] is None else str(rec[f])
        if rec["key"]:
            out[rec["key"]] = rec
    return out


# ---- exports --------------------------------------------------------------------------------

_EXPORT_LEADING = ("x", "y", "ra", "dec", "label", "time", "preset_hash")


def export_table(source, store: Optional[LabelStore] = None, *, preset_hash: str = "",
                 only_labelled: bool = False) -> Table:
    """The source's table with label, time, user and preset hash columns (x, y, RA, Dec first)."""
    t = source.table.copy(copy_data=True)
    keys = source.keys()
    recs = [store.records.get(k) if store is not None else None for k in keys]
    t["label"] = [r["label"] if r else "" for r in recs]
    t["time"] = [r["time"] if r else "" for r in recs]
    t["user"] = [r["user"] if r else "" for r in recs]
    t["preset_hash"] = [(r.get("preset_hash") if r else "") or preset_hash for r in recs]
    for c in ("x", "y", "ra", "dec"):
        if c not in t.colnames:
            t[c] = np.full(len(t), np.nan)
    order = [c for c in _EXPORT_LEADING] + [c for c in t.colnames if c not in _EXPORT_LEADING]
    t = t[order]
    if only_labelled:
        t = t[np.array([bool(v) for v in t["label"]], dtype=bool)]
    return t


def export_csv(path, source, store: Optional[LabelStore] = None, *,
               preset_hash: str = "", only_labelled: bool = False, overwrite: bool = False) -> str:
    """Write candidates (or collection items) with their labels as CSV.

    Columns start with ``x, y, ra, dec, label, time, preset_hash`` (x, y 0-based
    pixels), then every feature. Written atomically; refuses to overwrite unless asked.
    """
    t = export_table(source, store, preset_hash=preset_hash, only_labelled=only_labelled)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.colnames)
    for row in t:
        w.writerow([_csv_value(float(v)) if isinstance(v, (float, np.floating)) else
                    (int(v) if isinstance(v, (np.integer,)) else v) for v in row])
    return write_text_atomic(path, buf.getvalue(), overwrite=overwrite)


_REGION_COLORS = {"real": "green", "bogus": "red", "skip": "yellow", "": "cyan"}


def export_regions(path, source, store: Optional[LabelStore] = None, *,
                   radius: Optional[float] = None, overwrite: bool = False) -> str:
    """Write a DS9 region file: one circle per candidate in image coordinates (1-based),
    coloured by label (green real, red bogus, yellow skip, cyan unlabelled; dashed when fading).
    """
    if radius is None:
        radius = max(3.0, 1.5 * float(getattr(source, "meta", {}).get("fwhm", 3.0)))
    lines = ["# Region file format: DS9 version 4.1",
             "# diffgui candidates: green real, red bogus, yellow skip, cyan unlabelled; dashed = fading",
             'global color=cyan dashlist=8 3 width=1 font="helvetica 10 normal roman" select=1 '
             "highlite=1 dash=0 fixed=0 edit=1 move=1 delete=1 include=1 source=1",
             "image"]
    for i in range(len(source)):
        pos = source.position(i)
        if pos is None:
            continue
        x, y = pos
        lab = (store.label(source.key(i)) if store is not None else None) or ""
        row = source.table[i]
        sign = int(row["sign"]) if "sign" in source.table.colnames else 1
        ident = row["id"] if "id" in source.table.colnames else i + 1
        text = f"{ident} {lab}".strip()
        extras = f" color={_REGION_COLORS.get(lab, 'magenta')}" + (" dash=1" if sign < 0 else "")
        lines.append(f"circle({x + 1:.3f},{y + 1:.3f},{radius:.2f}) # text={{{text}}}{extras}")
    return write_text_atomic(path, "\n".join(lines) + "\n", overwrite=overwrite)
