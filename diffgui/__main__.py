"""``python -m diffgui``: the same as the ``diffgui`` command."""

from diffgui.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
