"""Where shiftlab keeps files it derives from the data (never inside the data root, which may be read-only)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_ROOT = "data"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: an explicit path, else ``$SHIFTLAB_DATA``, else ``./data``."""
    if explicit not in (None, ""):
        return Path(explicit).expanduser()
    return Path(os.environ.get("SHIFTLAB_DATA", DEFAULT_DATA_ROOT)).expanduser()


def cache_dir(*parts: str) -> Path:
    """``$SHIFTLAB_CACHE`` (default ``~/.cache/shiftlab``) joined with ``parts``, created if missing."""
    base = Path(os.environ.get("SHIFTLAB_CACHE", Path.home() / ".cache" / "shiftlab")).expanduser()
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
