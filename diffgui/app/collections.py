"""Cutout collections: ready-made science/template/difference triplets to vet (no Qt).

Supported layouts (:func:`open_collection` picks the right one):

* An ``.npz`` with ``triplets`` of shape ``(N, 3, H, W)`` in the order science,
  template, difference (optionally named by a ``channels`` array) and any number
  of per-item 1-D arrays of length N: the alert-triplet files (ZTF 63x63 with
  ``rb``/``drb``, Rubin 30x30 with ``reliability``). Every per-item array becomes a
  column; the machine score is the first of ``drb, rb, reliability, score``.
* An ``.npz`` holding one candidate as 2-D arrays ``new``/``ref``/``diff`` (and
  ``scorr``), as MeerLICHT's; a folder of such files is a collection.
* A folder of FITS cutouts: either one file per candidate with image HDUs named
  SCIENCE/SCI/NEW, TEMPLATE/REF, DIFF/DIFFERENCE/SUB (and SCORR) or a ``(3, H, W)``
  cube, or three files per candidate named ``<id>_sci.fits``, ``<id>_ref.fits``,
  ``<id>_diff.fits`` (``_science``/``_new``, ``_template``/``_tmpl``,
  ``_difference``/``_sub`` also work). Header keywords RB, DRB, RELIABILITY, SCORE
  become the score column.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import warnings
from typing import Optional

import numpy as np
from astropy.table import Table

from diffgui.engine.errors import InputError

from .candidates import VettingSource
from .labels import _safe, _stem, _writable, user_data_dir

__all__ = ["CutoutCollection", "open_collection", "load_npz", "load_fits_folder", "collection_labels_path",
           "SCORE_COLUMNS"]

#: Columns taken as the machine score, in order of preference.
SCORE_COLUMNS = ("drb", "rb", "reliability", "score", "real_bogus", "realbogus")
_KEY_COLUMNS = ("candid", "diaSourceId", "diasourceid", "objectId", "id", "name")
_CHANNEL_ROLES = {"science": "science", "sci": "science", "new": "science", "image": "science",
                  "template": "template", "ref": "template", "reference": "template", "tmpl": "template",
                  "difference": "diff", "diff": "diff", "sub": "diff", "scorr": "scorr", "s_corr": "scorr"}
_ROLE_ORDER = ("science", "template", "diff", "scorr")
_FITS_EXT = (".fits", ".fit", ".fts", ".fits.gz", ".fits.fz")


class CutoutCollection(VettingSource):
    """Ready-made cutouts with a table of per-item values.

    Attributes
    ----------
    table : astropy.table.Table
        One row per item: ``index`` (0-based), ``key`` (stable identifier) and every
        per-item value of the file (scores, magnitudes, times ...).
    stamps : numpy.ndarray
        ``(N, len(roles), H, W)`` float32 (NaN where the survey has no data).
    roles : tuple of str
        Cutout names in the order of ``stamps``' second axis.
    path : str
    score_column : str or None
        The machine score column, if any.
    """

    def __init__(self, stamps, roles, table: Table, path: str = "", title: str = "",
                 score_column: Optional[str] = None):
        stamps = np.asarray(stamps, dtype=np.float32)
        if stamps.ndim != 4 or stamps.shape[1] != len(roles):
            raise InputError(f"cutouts must be (N, {len(roles)}, H, W), got {stamps.shape}")
        if len(table) != stamps.shape[0]:
            raise InputError(f"{len(table)} table rows for {stamps.shape[0]} cutouts")
        self.stamps = stamps
        self.roles = tuple(roles)
        self.table = table
        self.path = path
        self.title = title or os.path.basename(path) or "collection"
        self.score_column = score_column
        shown = ["index"] + ([score_column] if score_column else [])
        shown += [c for c in table.colnames if c not in shown and c != "key"
                  and table[c].ndim == 1 and table[c].dtype.kind in "biufU"]
        self.display_columns = tuple(shown[:12])
        self._keys = [str(k) for k in table["key"]]

    def key(self, i: int) -> str:
        return self._keys[i]

    def keys(self) -> list:
        return list(self._keys)

    def cutouts(self, i: int, size: Optional[int] = None) -> dict:
        return {role: self.stamps[i, j] for j, role in enumerate(self.roles)}

    def record(self, i: int) -> dict:
        r = self.table[i]
        out = {}
        for c in ("ra", "dec", "snr"):
            if c in self.table.colnames:
                out[c] = float(r[c])
        if self.score_column:
            out["score"] = float(r[self.score_column])
        return out

    @property
    def stamp_shape(self) -> tuple:
        return tuple(self.stamps.shape[2:])


def _roles_from_channels(channels, n):
    if channels is None:
        if n == 3:
            return ("science", "template", "diff")
        if n == 4:
            return _ROLE_ORDER
        raise InputError(f"{n} cutouts per item without a 'channels' array: cannot tell which is which.")
    roles = []
    for c in channels:
        role = _CHANNEL_ROLES.get(str(c).strip().lower())
        if role is None:
            raise InputError(f"unknown cutout channel {c!r}; expected science, template, difference (or scorr).")
        roles.append(role)
    return tuple(roles)


def _finish_table(cols: dict, n: int) -> tuple[Table, Optional[str]]:
    t = Table()
    t["index"] = np.arange(n, dtype=np.int32)
    for k, v in cols.items():
        t[k] = v
    keycol = next((k for k in _KEY_COLUMNS if k in t.colnames), None)
    if keycol is not None and len(set(map(str, t[keycol]))) == n:
        t["key"] = [str(v) for v in t[keycol]]
    else:
        t["key"] = [str(i) for i in range(n)]
    score = next((c for c in SCORE_COLUMNS if c in t.colnames and t[c].dtype.kind in "iuf"), None)
    return t, score


def load_npz(path) -> CutoutCollection:
    """Load an ``.npz`` collection (alert triplets, or one MeerLICHT-style candidate).

    Raises
    ------
    InputError
        Not a readable npz, or no cutouts in it.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as d:
            data = {k: d[k] for k in d.files}
    except Exception as exc:
        raise InputError(f"cannot read {path} as an npz archive: {exc}") from None
    if "triplets" in data:
        trip = data.pop("triplets")
        if trip.ndim != 4:
            raise InputError(f"{path}: 'triplets' must be (N, 3, H, W), got shape {trip.shape}")
        roles = _roles_from_channels(data.pop("channels", None), trip.shape[1])
        n = trip.shape[0]
        cols = {k: v for k, v in data.items() if v.ndim == 1 and v.shape[0] == n}
        table, score = _finish_table(cols, n)
        return CutoutCollection(trip, roles, table, path, os.path.basename(path), score)
    single = _single_candidate(data, path)
    if single is None:
        raise InputError(f"{path} holds no cutouts: expected 'triplets' (N, 3, H, W) or 2-D arrays "
                         f"new/ref/diff; found {', '.join(data) or 'nothing'}.")
    return single


def _single_candidate(data: dict, path: str) -> Optional[CutoutCollection]:
    found = {}
    for k, v in data.items():
        role = _CHANNEL_ROLES.get(k.lower())
        if role and v.ndim == 2 and role not in found:
            found[role] = v
    if not {"science", "template", "diff"} <= set(found):
        return None
    roles = tuple(r for r in _ROLE_ORDER if r in found)
    shapes = {found[r].shape for r in roles}
    if len(shapes) != 1:
        raise InputError(f"{path}: cutouts have different shapes {sorted(shapes)}")
    stamps = np.stack([found[r] for r in roles])[None]
    cols = {k: np.atleast_1d(v) for k, v in data.items() if v.ndim == 0}
    cols.setdefault("name", np.array([_stem(path)]))
    table, score = _finish_table(cols, 1)
    return CutoutCollection(stamps, roles, table, path, os.path.basename(path), score)


def _merge(parts: list, path: str, title: str) -> CutoutCollection:
    """One collection from single-item collections (they must share roles and shape)."""
    roles = parts[0].roles
    shape = parts[0].stamp_shape
    bad = [p.path for p in parts if p.roles != roles or p.stamp_shape != shape]
    if bad:
        raise InputError(f"cutouts in {path} differ in size or kind: {os.path.basename(bad[0])} "
                         f"is not {shape[1]}x{shape[0]} with {', '.join(roles)}.")
    stamps = np.concatenate([p.stamps for p in parts])
    names = [c for c in parts[0].table.colnames if c not in ("index", "key")]
    cols = {}
    for c in names:
        if all(c in p.table.colnames for p in parts):
            try:
                cols[c] = np.concatenate([np.asarray(p.table[c]) for p in parts])
            except (ValueError, TypeError):
                pass
    table, score = _finish_table(cols, len(parts))
    return CutoutCollection(stamps, roles, table, path, title, score)


_SUFFIX_ROLES = {"sci": "science", "science": "science", "new": "science",
                 "ref": "template", "template": "template", "tmpl": "template",
                 "diff": "diff", "difference": "diff", "sub": "diff", "scorr": "scorr"}
_SCORE_KEYS = ("DRB", "RB", "RELIABILITY", "SCORE", "REALBOGUS")


def _fits_stamps(path):
    """``{role: array}``, header of one FITS cutout file (named HDUs or a 3-plane cube)."""
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            found, header = {}, hdul[0].header.copy()
            for h in hdul:
                if h.data is None or not hasattr(h.data, "ndim"):
                    continue
                role = _CHANNEL_ROLES.get(h.name.strip().lower())
                if role and h.data.ndim == 2:
                    found[role] = np.asarray(h.data, dtype=np.float32)
                elif h.data.ndim == 3 and h.data.shape[0] in (3, 4) and not found:
                    for role, plane in zip(_roles_from_channels(None, h.data.shape[0]), h.data):
                        found[role] = np.asarray(plane, dtype=np.float32)
                    header = h.header.copy()
                elif h.data.ndim == 2 and not found and h is hdul[0]:
                    found["_single"] = np.asarray(h.data, dtype=np.float32)
    return found, header


def _score_cols(header) -> dict:
    out = {}
    for k in _SCORE_KEYS:
        if k in header:
            try:
                out[k.lower()] = np.array([float(header[k])])
            except (TypeError, ValueError):
                pass
    for k in ("RA", "DEC"):
        if k in header:
            try:
                out[k.lower()] = np.array([float(header[k])])
            except (TypeError, ValueError):
                pass
    return out


def load_fits_folder(folder) -> CutoutCollection:
    """Load a folder of FITS cutouts (see the module documentation for the layouts)."""
    folder = os.fspath(folder)
    files = sorted(f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(_FITS_EXT))
    if not files:
        raise InputError(f"{folder} has no FITS files (.fits, .fit, .fts, .fits.gz, .fits.fz).")
    groups: dict = {}
    singles = []
    for f in files:
        stem = _stem(f)
        m = re.match(r"^(.*?)[_.-](sci|science|new|ref|template|tmpl|diff|difference|sub|scorr)$", stem, re.I)
        if m:
            groups.setdefault(m.group(1), {})[_SUFFIX_ROLES[m.group(2).lower()]] = f
        else:
            singles.append(f)
    parts = []
    for name, members in sorted(groups.items()):
        if not {"science", "template", "diff"} <= set(members):
            missing = {"science", "template", "diff"} - set(members)
            raise InputError(f"{folder}: cutout {name!r} lacks its {', '.join(sorted(missing))} file.")
        stamps, cols = {}, {"name": np.array([name])}
        for role, f in members.items():
            found, header = _fits_stamps(f)
            arr = found.get("_single", found.get(role))
            if arr is None:
                raise InputError(f"{f} has no 2-D image.")
            stamps[role] = arr
            cols.update(_score_cols(header))
        parts.append(_stamps_part(stamps, cols, folder, name))
    for f in singles:
        found, header = _fits_stamps(f)
        found.pop("_single", None)
        if not {"science", "template", "diff"} <= set(found):
            raise InputError(f"{f} is not a cutout triplet: it needs image HDUs named SCIENCE, TEMPLATE "
                             "and DIFF (or a 3-plane cube), or files named <id>_sci/_ref/_diff.fits.")
        cols = {"name": np.array([_stem(f)])}
        cols.update(_score_cols(header))
        parts.append(_stamps_part(found, cols, f, _stem(f)))
    return _merge(parts, folder, os.path.basename(os.path.abspath(folder)))


def _stamps_part(found: dict, cols: dict, path: str, name: str) -> CutoutCollection:
    roles = tuple(r for r in _ROLE_ORDER if r in found)
    shapes = {found[r].shape for r in roles}
    if len(shapes) != 1:
        raise InputError(f"cutout {name!r} in {path}: images differ in shape {sorted(shapes)}")
    table, score = _finish_table(cols, 1)
    return CutoutCollection(np.stack([found[r] for r in roles])[None], roles, table, path, name, score)


def open_collection(path) -> CutoutCollection:
    """Open a collection from an ``.npz`` file, a FITS file, or a folder of either."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"collection not found: {path}")
    if os.path.isdir(path):
        npz = sorted(glob.glob(os.path.join(path, "*.npz")))
        fits_files = [f for f in os.listdir(path) if f.lower().endswith(_FITS_EXT)]
        if fits_files:
            return load_fits_folder(path)
        if npz:
            parts = [load_npz(f) for f in npz]
            if len(parts) == 1:
                return parts[0]
            if all(len(p) == 1 for p in parts):
                return _merge(parts, path, os.path.basename(os.path.abspath(path)))
            raise InputError(f"{path} holds several multi-item npz files: open one of them.")
        raise InputError(f"{path} has no cutouts (no .npz or FITS files).")
    low = path.lower()
    if low.endswith(".npz"):
        return load_npz(path)
    if low.endswith(_FITS_EXT):
        found, header = _fits_stamps(path)
        found.pop("_single", None)
        if not {"science", "template", "diff"} <= set(found):
            raise InputError(f"{path} is not a cutout triplet (HDUs SCIENCE, TEMPLATE, DIFF or a 3-plane cube).")
        cols = {"name": np.array([_stem(path)])}
        cols.update(_score_cols(header))
        return _stamps_part(found, cols, path, _stem(path))
    raise InputError(f"{path}: unknown collection format; use an .npz of triplets or a folder of FITS cutouts.")


def collection_labels_path(path, ext: str = ".labels.ecsv") -> str:
    """Label file of a collection: beside it when writable, else in the user data folder."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path) if not os.path.isdir(path) else os.path.dirname(path.rstrip(os.sep))
    name = _stem(path) if not os.path.isdir(path) else os.path.basename(path.rstrip(os.sep))
    if _writable(folder):
        return os.path.join(folder, name + ext)
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    return os.path.join(user_data_dir(), "labels", f"{_safe(name)}-{digest}{ext}")
