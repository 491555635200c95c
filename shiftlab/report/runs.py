"""Find run folders under a sweep or runs folder and load them into records.

A run folder holds ``config.yaml`` and ``summary.json`` (see docs/contract.md); one with ``config.yaml``
only is an unfinished run (still training, killed, failed or stopped by a scheduler): it is counted and
listed, never fatal.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic_core import to_jsonable_python

from ..errors import ReportError
from ..utils import did_you_mean, read_yaml_mapping


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its flattened config, ``summary.json`` and ``metrics.csv`` rows."""

    path: Path
    config: dict[str, Any]  # dotted keys, e.g. "optim.lr"; lists as tuples
    summary: dict[str, Any]
    metrics: list[dict[str, float | None]]  # one row per epoch; None where an epoch was not evaluated

    @property
    def label(self) -> str:
        return str(self.path)

    @property
    def selections(self) -> dict[str, dict[str, Any]]:
        return self.summary.get("selections") or {}


@dataclass(frozen=True)
class UnfinishedRun:
    path: Path
    status: str  # "failed: <error>", "stopped by the scheduler" or "no summary.json yet"


@dataclass(frozen=True)
class RunSet:
    root: Path
    finished: list[RunRecord]
    unfinished: list[UnfinishedRun]
    included: tuple[Path, ...] = ()  # further folders whose runs joined root's (``--include``)
    where: tuple[str, ...] = ()  # the ``--where`` conditions the runs were restricted to, as given


def flatten_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists become tuples so values can be grouped."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = tuple(value) if isinstance(value, list) else value
    return flat


def find_run_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` (itself included) that holds a ``config.yaml``, sorted."""
    return sorted(p.parent for p in root.rglob("config.yaml") if p.is_file())


def _read_mapping(path: Path, parse, error: type[Exception], what: str) -> dict[str, Any]:
    """``parse(text)`` of ``path``, which must give a mapping; anything else names the file."""
    try:
        tree = parse(path.read_text())
    except error as err:
        raise ReportError(f"{path} cannot be read as {what} ({err}); delete the run folder or re-run it") from None
    if not isinstance(tree, dict):
        raise ReportError(f"{path} does not hold {what} (a mapping)")
    return tree


def _number(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    """``metrics.csv`` as numbers, one dict per epoch; an absent file gives no rows."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def load_run(folder: Path) -> RunRecord:
    config = read_yaml_mapping(folder / "config.yaml", "run config", ReportError)
    summary = _read_mapping(folder / "summary.json", json.loads, json.JSONDecodeError, "a run summary (JSON)")
    # a key added to shiftlab after the run was made has its default there (new keys default to the old
    # behaviour), so that it does not pass for a hyperparameter varying between older and newer runs; the
    # same for the method's own keys, which config.yaml files written before they were resolved omit
    method = config.get("method")
    defaults = {**_defaults(), **_method_defaults(method.get("name") if isinstance(method, dict) else None)}
    return RunRecord(folder, {**defaults, **flatten_config(config)}, summary, read_metrics(folder / "metrics.csv"))


@functools.cache
def _defaults() -> dict[str, Any]:
    """Every config key's default (the method's own keys are the method's: :func:`_method_defaults`)."""
    from ..config import Config

    return flatten_config(Config().to_dict())


def _method_defaults(name: str | None) -> dict[str, Any]:
    """``method.<key>`` -> default of every key of method ``name``'s ``Params`` that has one; nothing for a
    method that is not registered here (a plugin's: its runs' config.yaml files hold every key anyway)."""
    from ..methods import METHODS

    if name not in METHODS:
        return {}
    fields = METHODS[name].Params.model_fields
    defaults = {k: f.get_default(call_default_factory=True) for k, f in fields.items() if not f.is_required()}
    return flatten_config({"method": to_jsonable_python(defaults)}) if defaults else {}  # as in config.yaml


def _unfinished_status(folder: Path) -> str:
    error = folder / "error.txt"
    if error.is_file():
        lines = [line for line in error.read_text(errors="replace").splitlines() if line.strip()]
        return f"failed: {lines[-1].strip() if lines else 'see error.txt'}"
    if (folder / "stopped_by_scheduler").is_file():
        return "stopped by the scheduler"
    return "no summary.json yet"


def load_runs(root: str | Path, include: Sequence[str | Path] = ()) -> RunSet:
    """The finished and unfinished runs under ``root`` and under each ``include`` folder (a run folder found
    twice counts once); no finished run at all is an error."""
    roots = [Path(root), *map(Path, include)]
    folders: list[Path] = []
    seen: set[Path] = set()
    for folder in roots:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder; give a sweep folder or a folder of run folders")
        for found in find_run_folders(folder):
            if found.resolve() not in seen:
                seen.add(found.resolve())
                folders.append(found)
    finished = [load_run(f) for f in folders if (f / "summary.json").is_file()]
    unfinished = [UnfinishedRun(f, _unfinished_status(f)) for f in folders if not (f / "summary.json").is_file()]
    if not finished:
        extra = f" ({len(unfinished)} unfinished: no summary.json yet)" if unfinished else ""
        where = " or ".join(map(str, roots))
        raise ReportError(f"no finished run folder (a folder with config.yaml and summary.json) under {where}{extra}")
    return RunSet(roots[0], finished, unfinished, tuple(roots[1:]))


def parse_where(condition: str) -> tuple[str, list[str]]:
    """``"data.target=mnist_m,usps"`` -> ``("data.target", ["mnist_m", "usps"])``: a key and its allowed values."""
    key, sep, values = condition.partition("=")
    allowed = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not allowed:
        raise ReportError(f"--where {condition!r}: write KEY=VALUE or KEY=VALUE1,VALUE2 (e.g. data.target=mnist_m)")
    return key.strip(), allowed


def _matches(value: Any, allowed: Sequence[str]) -> bool:
    """A config value against ``--where`` values written on the command line: ``0.1`` matches 0.1, ``true``
    matches True, ``none`` / ``null`` match None, anything else its text."""
    for text in allowed:
        if str(value) == text or (value is None and text.lower() in ("none", "null")):
            return True
        try:
            if value == yaml.safe_load(text):
                return True
        except yaml.YAMLError:
            pass
    return False


def restrict_runs(runset: RunSet, where: Sequence[str]) -> RunSet:
    """Only the runs whose config matches every ``--where`` condition (a sweep's finished part, one pair of a
    benchmark); an unknown key, or conditions that leave no finished run, are errors naming what there is."""
    if not where:
        return runset
    conditions = [parse_where(c) for c in where]
    known = set().union(*(run.config for run in runset.finished))
    for key, _ in conditions:
        if key not in known:
            raise ReportError(f"--where: no run has config key '{key}'.{did_you_mean(key, known)}")
    finished = [r for r in runset.finished if all(_matches(r.config.get(k), v) for k, v in conditions)]
    if not finished:
        present = "; ".join(
            f"{k}: {', '.join(sorted({str(r.config.get(k)) for r in runset.finished}))}" for k, _ in conditions
        )
        raise ReportError(f"--where {' '.join(where)} leaves no finished run; the runs have {present}")

    def unfinished_matches(run: UnfinishedRun) -> bool:  # one whose config cannot be read is kept: it may match
        try:
            config = flatten_config(read_yaml_mapping(run.path / "config.yaml", "run config", ReportError))
        except ReportError:
            return True
        return all(_matches(config.get(k), v) for k, v in conditions)

    unfinished = [r for r in runset.unfinished if unfinished_matches(r)]
    return RunSet(runset.root, finished, unfinished, runset.included, tuple(where))
