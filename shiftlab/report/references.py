"""Published numbers to print beside ours, from a small YAML file::

    source: "Activation Shaping for Domain Adaptation (study), Table 1"   # default source of the entries
    setting: {model.pretrained: IMAGENET1K_V1, train.epochs: 30}           # default setting of the entries
    results:
      - {row: {method.name: source_only}, col: {data.source: art_painting, data.target: cartoon}, value: 54.48}
      - {row: {...}, col: {...}, value: 40.1, source: "another paper", setting: {train.epochs: 50}}
      - {row: {...}, col: {...}, value: 58.96, loss: 0.0096636}   # the document's loss column, where it has one

``value`` is in percent, as papers print it. An entry belongs to a table cell when every run of the
cell has each ``row`` and ``col`` key at the given value (so a key need not be a row or column key of
the table). ``loss`` (optional) is a loss the document prints beside the number, as printed (its
definition is the document's: reports show it beside the number, never compare it with ours).
``setting`` is what the published number was measured with: where our runs' config differs
on any of its keys, the published number is marked and the difference listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ReportError
from ..selection.rules import Cell, RunLike, sort_key
from ..utils import read_yaml_mapping


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    row: dict[str, Any] = Field(default_factory=dict)
    col: dict[str, Any] = Field(default_factory=dict)
    value: float
    loss: float | None = None
    source: str | None = None
    setting: dict[str, Any] | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | None = None
    setting: dict[str, Any] = Field(default_factory=dict)
    results: list[_Entry]


@dataclass(frozen=True)
class Reference:
    """One published number (percent) for the cells matching ``where``, measured in ``setting``."""

    where: dict[str, Any]  # the entry's row and col keys together
    value: float
    source: str
    setting: dict[str, Any]
    loss: float | None = None  # the document's loss beside the number, as printed


def load_references(path: str | Path) -> list[Reference]:
    """The entries of one reference file, each with its source and setting resolved."""
    path = Path(path)
    raw = read_yaml_mapping(path, "reference file", ReportError)
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as err:
        raise ReportError(
            f"reference file {path} is not in the expected format (source, setting, results: "
            f"[{{row, col, value}}]): {err}"
        ) from None
    refs = []
    for entry in parsed.results:
        source = entry.source or parsed.source
        if not source:
            raise ReportError(f"reference file {path}: an entry has no source and the file gives no default")
        setting = parsed.setting if entry.setting is None else {**parsed.setting, **entry.setting}
        refs.append(Reference({**entry.row, **entry.col}, entry.value, source, setting, entry.loss))
    return refs


def same_value(ours: Any, published: Any) -> bool:
    """Config values equal up to representation: 30 == 30.0, lists == tuples, and a one-item list == its
    item (``method.layers: conv1`` in a reference file is the ``[conv1]`` a run's config stores)."""
    if (
        isinstance(ours, (int, float))
        and isinstance(published, (int, float))
        and not isinstance(ours, bool)
        and not isinstance(published, bool)
    ):
        return float(ours) == float(published)
    if isinstance(ours, (list, tuple)) and isinstance(published, (list, tuple)):
        return len(ours) == len(published) and all(map(same_value, ours, published))
    if isinstance(ours, (list, tuple)) and len(ours) == 1:
        return same_value(ours[0], published)
    if isinstance(published, (list, tuple)) and len(published) == 1:
        return same_value(ours, published[0])
    return ours == published or str(ours) == str(published)


def matches(ref: Reference, cell: Cell) -> bool:
    return all(same_value(run.config.get(k), v) for k, v in ref.where.items() for run in cell.runs)


def _ours_text(runs: Sequence[RunLike], key: str) -> str:
    values = sorted({run.config.get(key, "(not set)") for run in runs}, key=sort_key)
    return "/".join(str(v) for v in values)


def setting_differences(ref: Reference, cell: Cell) -> list[str]:
    """``"key: ours X vs published Y"`` for each setting key where a run of the cell differs."""
    return [
        f"{key}: ours {_ours_text(cell.runs, key)} vs published {value}"
        for key, value in ref.setting.items()
        if not all(same_value(run.config.get(key), value) for run in cell.runs)
    ]
