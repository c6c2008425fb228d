"""Things to vet: :class:`VettingSource` (the interface the vetting view shows) and
:class:`CandidateSet` (candidates found on a subtraction result) (no Qt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from astropy.table import Table

from diffgui.app.candidate_maps import cutout
from diffgui.app.labels import _float, _int

#: Images cut out around each candidate, in display order.
CUTOUT_ROLES = ("science", "template", "diff", "scorr")


# ---- sources of things to vet -------------------------------------------------------------

class VettingSource:
    """What the vetting view shows: a table of items with cutouts, keys and positions.

    Subclasses set :attr:`table` (one row per item), :attr:`roles` (cutout names in
    display order) and implement :meth:`cutouts`. :class:`CandidateSet` (candidates on
    a pair) and :class:`diffgui.app.collections.CutoutCollection` are the two kinds.
    """

    table: Table
    roles: tuple = CUTOUT_ROLES
    title: str = ""
    #: Column holding a machine score (collections), or None.
    score_column: Optional[str] = None
    #: Columns shown in the vetting table, in order.
    display_columns: tuple = ()

    def __len__(self) -> int:
        return len(self.table)

    def key(self, i: int) -> str:
        """Stable identifier of item ``i`` for its label."""
        raise NotImplementedError

    def keys(self) -> list:
        return [self.key(i) for i in range(len(self))]

    def position(self, i: int) -> Optional[tuple]:
        """``(x, y)`` of item ``i`` in the pair's images, or None (collections)."""
        return None

    def cutouts(self, i: int, size: Optional[int] = None) -> dict:
        """``{role: 2-D array}`` for item ``i``."""
        raise NotImplementedError

    def record(self, i: int) -> dict:
        """Identification stored with a label (x, y, ra, dec, sign, snr, score)."""
        return {}

    def match(self, records: dict) -> dict:
        """Map stored label keys to this source's keys (default: identical keys)."""
        mine = set(self.keys())
        return {k: k for k in records if k in mine}


@dataclass
class CandidateSet(VettingSource):
    """Candidates found on one subtraction result.

    Attributes
    ----------
    table : astropy.table.Table
        One row per candidate with :data:`COLUMNS`, brightest S/N first.
    images : dict
        ``{'science', 'template', 'diff', 'scorr'}`` arrays the cutouts come from
        (missing roles are left out).
    meta : dict
        How they were found: ``detection`` ('scorr' or 'diff'), ``threshold``,
        ``noise_scale`` (robust sigma of the raw map), ``fwhm``, ``shape``, method,
        preset hash.
    wcs : astropy.wcs.WCS or None
    cutout_size : int
    """

    table: Table
    images: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    wcs: object = None
    cutout_size: int = 31
    title: str = "candidates"
    display_columns: tuple = ("id", "snr", "sign", "x", "y", "flux", "fwhm", "ellipticity",
                              "dist_template", "dipole", "neg_frac", "masked_frac")

    @property
    def roles(self) -> tuple:
        return tuple(r for r in CUTOUT_ROLES if self.images.get(r) is not None)

    def key(self, i: int) -> str:
        r = self.table[i]
        return _position_key(r["x"], r["y"], r["sign"])

    def position(self, i: int) -> tuple:
        r = self.table[i]
        return float(r["x"]), float(r["y"])

    def cutouts(self, i: int, size: Optional[int] = None) -> dict:
        x, y = self.position(i)
        size = int(size or self.cutout_size)
        return {role: cutout(self.images[role], x, y, size) for role in self.roles}

    def record(self, i: int) -> dict:
        r = self.table[i]
        return {"x": float(r["x"]), "y": float(r["y"]), "ra": float(r["ra"]), "dec": float(r["dec"]),
                "sign": int(r["sign"]), "snr": float(r["snr"])}

    def match(self, records: dict, radius: float = 1.5) -> dict:
        """Stored labels to current candidates: same sign, nearest within ``radius`` px."""
        if len(self) == 0 or not records:
            return {}
        from scipy.spatial import cKDTree
        x = np.asarray(self.table["x"], float)
        y = np.asarray(self.table["y"], float)
        s = np.asarray(self.table["sign"], int)
        keys = self.keys()
        out, taken = {}, set()
        for sign in (1, -1):
            sel = np.nonzero(s == sign)[0]
            if sel.size == 0:
                continue
            tree = cKDTree(np.column_stack([x[sel], y[sel]]))
            for k, rec in records.items():
                rx, ry, rs = _float(rec.get("x")), _float(rec.get("y")), rec.get("sign")
                if not (np.isfinite(rx) and np.isfinite(ry)) or _int(rs, 0) != sign:
                    continue
                d, j = tree.query([rx, ry])
                if d <= radius and keys[sel[j]] not in taken:
                    out[k] = keys[sel[j]]
                    taken.add(keys[sel[j]])
        return out


def _position_key(x, y, sign) -> str:
    return f"{float(x):.2f}_{float(y):.2f}_{'+' if int(sign) >= 0 else '-'}"

