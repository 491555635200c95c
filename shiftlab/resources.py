"""The configs and sweeps that ship with shiftlab, found by name.

``shiftlab train --config dann/mnist_to_mnist_m`` and ``shiftlab sweep demo_methods`` work from any
folder once shiftlab is installed: a name that is not a file is looked up among the shipped files. The
rule, for configs and sweeps alike:

1. a path that exists wins (``configs/demo.yaml``, ``my_lab/exp.yaml``), as before;
2. else the name under the shipped folder, with or without ``.yaml`` and with or without the leading
   ``configs/`` or ``sweeps/`` the repository spells (so a sweep's ``config: [configs/demo.yaml]`` and
   the README's commands work from an installed wheel, away from the repository).

Where they are: a wheel carries the repository's ``configs/`` and ``sweeps/`` as ``shiftlab/_data/configs``
and ``shiftlab/_data/sweeps`` (copied by ``setup.py`` at build time; the repository keeps one copy); a
source checkout or an editable install reads the repository's own folders beside the package. ``base:``
chains inside shipped configs resolve like any other, relative to the file, since the folder tree is
kept as it is.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from .errors import ShiftlabError

KINDS = {"configs": "config", "sweeps": "sweep"}
EXAMPLES = {"configs": "dann/mnist_to_mnist_m", "sweeps": "demo_methods"}
_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: str) -> Path | None:
    """The folder of shipped ``kind`` files (``configs`` or ``sweeps``), or None when there is none."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    packaged = _PACKAGE / "_data" / kind  # an installed wheel
    if packaged.is_dir():
        return packaged
    checkout = _PACKAGE.parent / kind  # a source checkout or an editable install: the repository's own folder
    if checkout.is_dir() and (_PACKAGE.parent / "pyproject.toml").is_file():
        return checkout
    return None


def shipped_names(kind: str) -> list[str]:
    """The names of the shipped ``kind`` files, as the command line takes them (``dann/mnist_to_mnist_m``)."""
    root = shipped_dir(kind)
    if root is None:
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def shipped(kind: str, name: str | os.PathLike) -> Path | None:
    """The shipped file ``name`` names (``demo``, ``demo.yaml``, ``configs/demo.yaml``), or None."""
    root = shipped_dir(kind)
    rel = PurePath(name)
    if root is None or rel.is_absolute() or ".." in rel.parts:
        return None
    if rel.parts[:1] == (kind,):
        rel = PurePath(*rel.parts[1:])
    if not rel.parts:
        return None
    for candidate in (rel, rel.with_name(rel.name + ".yaml")):
        path = root / candidate
        if path.suffix in (".yaml", ".yml") and path.is_file():
            return path
    return None


def find(
    kind: str, name: str | os.PathLike, error: type[Exception] = ShiftlabError, relative_to: Path | None = None
) -> Path:
    """The file that ``name`` means: an existing path (relative to ``relative_to`` if given, else to the
    current folder), else the shipped file of that name; else ``error`` naming both places."""
    path = Path(name).expanduser()
    if relative_to is not None:
        path = relative_to / path
    if path.is_file():
        return path
    found = shipped(kind, name)
    if found is not None:
        return found
    what = KINDS[kind]
    names = shipped_names(kind)
    stem = PurePath(name).as_posix().removeprefix(f"{kind}/").removesuffix(".yaml")
    hint = ""
    if names:
        close = [n for n in names if n.split("/")[-1] == stem.split("/")[-1]]  # the right file, another folder
        hint = f" Did you mean '{close[0]}'?" if close else _did_you_mean(stem, names)
    raise error(
        f"{what} file not found: {path} (the file does not exist, and no {what} of that name ships with "
        f"shiftlab; give a path, or a shipped name such as '{EXAMPLES[kind]}').{hint}"
    )


def _did_you_mean(name: str, names: list[str]) -> str:
    from .utils import did_you_mean

    return did_you_mean(name, names)
