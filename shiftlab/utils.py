"""Small helpers shared across shiftlab: atomic file writes and "did you mean" error hints.

One copy of each, so every file the toolkit writes survives a crash the same way and every
"unknown name" error reads the same.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "did_you_mean",
    "unknown_choice_error",
    "read_yaml_mapping",
]


# --------------------------------------------------------------------------------------------------
# Atomic writes


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; the caller creates a file or a folder there.

    When the block ends normally, a file is fsync'ed and the temporary is renamed over ``path`` by
    one ``os.replace``; on any exception (Ctrl-C included) it is removed. Readers of ``path`` thus
    see the old content or the new one, never half of it, even after a crash: the temporary sits in
    the same folder, so the rename cannot cross file systems. ``suffix`` (e.g. ``".part"``) names
    the temporary ``<path><suffix>`` instead of a unique hidden name, so that a stale one left by a
    killed process is overwritten by the next attempt rather than piling up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix if suffix else f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if tmp.is_file():
            _fsync(tmp)  # the data must be on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, atomically: a reader never parses a half-written state file."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# "Did you mean"


def did_you_mean(name: str, choices: Iterable[str], *, prefix: str = "") -> str:
    """``" Did you mean '<prefix><closest>'?"`` for the closest of ``choices``, or ``""`` if none is close.

    Meant to be appended to an error message ending in a full stop.
    """
    hint = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean '{prefix}{hint[0]}'?" if hint else ""


def unknown_choice_error(kind: str, name: str, choices: Iterable[str]) -> str:
    """The message ``unknown <kind> '<name>'; valid: a, b, c. Did you mean 'x'?``.

    Returns the text rather than raising, so that each caller raises its own error class.
    """
    choices = list(choices)
    return f"unknown {kind} '{name}'; valid: {', '.join(choices)}.{did_you_mean(name, choices)}"


# --------------------------------------------------------------------------------------------------
# Reading YAML files the user wrote


def read_yaml_mapping(path: str | os.PathLike, what: str, error: type[Exception] | None = None) -> dict[str, Any]:
    """The mapping a YAML file holds (``{}`` for an empty file), else ``error`` (default ``ConfigError``)
    with a one-line message naming ``what`` (e.g. ``"sweep file"``) and ``path``.

    One copy of "read a YAML mapping or raise", so that a missing, unreadable, malformed or non-mapping
    file is reported the same way by ``train``, ``sweep`` and ``report``.
    """
    import yaml

    if error is None:
        from .errors import ConfigError

        error = ConfigError
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path} (the file does not exist)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise error(f"cannot parse {what} {path}: {_yaml_problem(err)}; fix the file's YAML") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"cannot read {what} {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a mapping of keys (key: value lines), got a {type(data).__name__}")
    return data


def _yaml_problem(err: Exception) -> str:
    """PyYAML's several-line message as one line: the problem and where it is (1-based line, column)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())
