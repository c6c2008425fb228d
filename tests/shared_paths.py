"""Where the project's shared folder (real data, design notes, seed) is.

CI clones the repository into a fresh folder with ``shared/`` beside it; developers
have it at ``/work/shared``. ``DIFFGUI_SHARED`` overrides both.
"""

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    candidates = [os.environ.get("DIFFGUI_SHARED"), _REPO.parent / "shared", "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "data").is_dir():
            return Path(c)
    return Path(candidates[1])


SHARED = _find_shared()
DATA = SHARED / "data"
