"""What a sweep file says, and the trials it expands to.

A sweep is a YAML file (one table of a study = one file under ``sweeps/``)::

    name: demo_methods                 # the sweep's folder: <output_dir>/<name> (default: the file's stem)
    output_dir: runs/sweeps            # where sweep folders go
    config: [configs/demo.yaml]        # base config files, as `shiftlab train --config` takes them
    set: {train.epochs: 10}            # fixed config keys, for every trial; "{grid.key}" in a value is
                                       # that trial's grid value (see fill_templates: two-stage sweeps)
    grid:                              # the cartesian product of these lists
      method.name: [source_only, adabn, target_oracle]
      experiment.seed: [0, 1, 2]
    exclude:                           # optional: grid points to skip (every key of an entry must match)
      - {method.name: adabn, experiment.seed: 2}
    search:                            # optional: sample some keys instead of listing them
      algorithm: random                # random | optuna (Optuna's TPE through Ray Tune's OptunaSearch)
      num_samples: 8                   # per grid point
      seed: 0                          # random search draws the same trials on every re-run
      metric: source_val_acc           # what optuna maximises (must read no target label)
      space: {optim.lr: {loguniform: [1.0e-4, 1.0e-1]}, method.lambda_: {choice: [0.1, 1.0]}}
    resources: {cpu: 1, gpu: 0}        # per trial; fractional GPUs let small runs share one
    max_concurrent: null               # cap on trials at once (default: as the resources allow)
    asha: null                         # {metric: source_val_acc, grace_period: 1, reduction_factor: 2}
    report: {rows: method.name, cols: data.target}   # defaults for `shiftlab report` on this sweep
    method_search: false               # true: each point also runs its method's own search space
                                       # (Method.search_space, e.g. dann: {weight: [0.1, 0.3, 1.0]})

A trial's config is ``set`` and its grid point (and sampled keys; they win over ``set``) laid over the
``config`` files. A method section given there, as a whole (``method: [{name: adabn}, {name: dann,
lambda_: 0.1}]``) or as ``method.name``, replaces the files' method section when it names another
method (their activation-matching keys do not reach an AdaBN trial), and merges into it when it names
the same method or none (``method.lambda_: [0.1, 1.0]``). ``set``'s method keys reach every trial.

Every trial's config is built and validated before anything runs, the method's own keys included
(``method.*``, typed by the method's ``Params``), so a typo fails the whole sweep at once with the key named. A trial is named by the values that make it differ (``method.name=adabn,
experiment.seed=1``), so a re-run finds its run folder again.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import Config, build_config, merge, merge_config, nest_dotted, read_yaml
from ..errors import ShiftlabError, SweepError
from ..resources import find
from ..utils import read_yaml_mapping, unknown_choice_error


def blind_metric(metric: str, key: str) -> str:
    """``metric`` if it reads no target test label (a search or a scheduler may only follow such a metric)."""
    if metric.startswith("target_") and metric != "target_val_acc":
        raise ValueError(
            f"{key} '{metric}' reads target test labels; use source_val_acc, an unsupervised "
            f"validator (unsup_entropy, unsup_im, unsup_snd) or target_val_acc"
        )
    return metric


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchSpec(_Strict):
    algorithm: Literal["random", "optuna"] = Field("random", description="how sampled keys are drawn")
    num_samples: int = Field(4, ge=1, description="trials per grid point")
    seed: int = Field(0, description="seed of the draws (random search repeats its trials on a re-run)")
    metric: str = Field("source_val_acc", description="metric optuna maximises at each trial's last evaluation")
    space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict, description="key -> {distribution: arguments}")

    @field_validator("space")
    @classmethod
    def _known_distributions(cls, space):
        for key, dist in space.items():
            if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
                raise ValueError(f"search.space.{key} must be one of {{{', '.join(DISTRIBUTIONS)}: [...]}}, got {dist}")
            ((kind, args),) = dist.items()
            if kind != "choice" and len(args) != 2:
                raise ValueError(f"search.space.{key}: {kind} takes [low, high], got {args}")
        return space

    @field_validator("metric")
    @classmethod
    def _blind_metric(cls, metric):
        return blind_metric(metric, "search.metric")


class AshaSpec(_Strict):
    metric: str = "source_val_acc"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)

    @field_validator("metric")
    @classmethod
    def _blind_metric(cls, metric):  # stopping trials on target labels would select on them
        return blind_metric(metric, "asha.metric")


class SweepSpec(_Strict):
    name: str
    output_dir: str = "runs/sweeps"
    config: list[str] = Field(default_factory=list)
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    search: SearchSpec | None = None
    resources: dict[str, float] = Field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent: int | None = Field(None, ge=1)
    asha: AshaSpec | None = None
    report: dict[str, Any] = Field(default_factory=dict)
    method_search: bool = Field(
        False,
        description="expand each grid point by its method's own search space "
        "(``Method.search_space``, declared beside its Params), so a benchmark over many "
        "methods lists no method's weights itself",
    )

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, grid):
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key} is an empty list: a grid with no value runs no trial")
        return grid

    @field_validator("exclude")
    @classmethod
    def _exclude_grid_keys(cls, exclude, info):
        grid = info.data.get("grid") or {}
        for i, entry in enumerate(exclude):
            if not entry:
                raise ValueError(f"exclude[{i}] is empty: it would skip every trial")
            for key, value in entry.items():
                if key not in grid:
                    raise ValueError(f"exclude[{i}]: {key} is not a grid key; grid keys: {', '.join(grid) or '(none)'}")
                if value not in grid[key]:
                    raise ValueError(f"exclude[{i}]: {key}={value!r} is not among grid.{key} {grid[key]}")
        return exclude

    @field_validator("resources")
    @classmethod
    def _known_resources(cls, resources):
        unknown = set(resources) - {"cpu", "gpu"}
        if unknown:
            raise ValueError(f"resources: unknown {sorted(unknown)}; valid: cpu, gpu")
        return resources

    @field_validator("report")
    @classmethod
    def _known_report_options(cls, report):
        # a YAML flow mapping splits "cols: a,b" at the comma into a key "b": catch it here, not in a table
        valid = ("rows", "cols", "rules", "metric", "hparams", "reference", "x", "no_plots")
        for key in report:
            if key not in valid:
                raise ValueError(
                    unknown_choice_error("report", key, valid)
                    + " (in a {...} mapping quote comma-separated keys: cols: 'data.source,data.target')"
                )
        return report


class Trial(BaseModel):
    """One run of a sweep: its name (= its run folder's name) and the keys that make it differ."""

    name: str
    point: dict[str, Any]  # the grid point and sampled values (dotted keys)
    config: dict[str, Any]  # the resolved config (paths absolute), ready for Config.model_validate


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; errors name the file and the key."""
    path = find("sweeps", path, SweepError)  # a path that exists, else a sweep shipped with shiftlab
    raw = read_yaml_mapping(path, "sweep file", SweepError)
    raw.setdefault("name", path.stem)
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        valid = ", ".join(SweepSpec.model_fields)
        raise SweepError(f"{path}: {problems} (valid top-level keys: {valid})") from None


def sweep_dir(spec: SweepSpec) -> Path:
    return (Path(spec.output_dir) / spec.name).resolve()


def _grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    keys = list(spec.grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]
    points = [p for p in points if not any(all(p[k] == v for k, v in e.items()) for e in spec.exclude)]
    return [q for p in points for q in _method_search(spec, p)] if spec.method_search else points


def _method_search(spec: SweepSpec, point: dict[str, Any]) -> list[dict[str, Any]]:
    """``point`` times its method's ``search_space`` (``method_search: true``): one point per combination."""
    from ..methods import get_method

    name = point.get("method.name") or (point.get("method") or {}).get("name") or spec.set.get("method.name")
    if name is None:
        raise SweepError(f"sweep '{spec.name}': method_search needs method.name in the grid or in set")
    space = get_method(name).search_space
    keys = [f"method.{k}" for k in space]
    return [{**point, **dict(zip(keys, values))} for values in itertools.product(*space.values())]


def draw(space: dict[str, dict[str, list[Any]]], rng: np.random.Generator) -> dict[str, Any]:
    """One random draw of every key of ``space`` (Bergstra & Bengio, JMLR 2012: random search)."""
    out = {}
    for key, dist in space.items():
        ((kind, args),) = dist.items()
        if kind == "choice":
            out[key] = args[int(rng.integers(len(args)))]
        elif kind == "uniform":
            out[key] = float(rng.uniform(*args))
        elif kind == "loguniform":
            out[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
        else:  # randint: [low, high) as numpy and Tune take it
            out[key] = int(rng.integers(*args))
    return out


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_format(v) for v in value)
    return str(value)


def _dotted(point: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A grid value that is a whole section (``method: {name: finetune, layers: 2}``) names the trial by its
    keys (``method.name=finetune,method.layers=2``), like separate grid keys would."""
    out = []
    for key, value in point.items():
        if isinstance(value, dict) and value:
            out += _dotted(value, f"{prefix}{key}.")
        else:
            out.append((prefix + key, value))
    return out


def trial_name(point: dict[str, Any]) -> str:
    """``key=value,key=value`` of the keys that make the trial differ, safe as a folder name; long names
    end in a hash of the full point so that two trials never share a folder."""
    if not point:
        return "default"
    text = ",".join(f"{k}={_format(v)}" for k, v in _dotted(point))
    text = re.sub(r"[^A-Za-z0-9._=,+@()-]", "_", text)
    if len(text) > 120:
        digest = hashlib.sha1(repr(sorted(point.items())).encode()).hexdigest()[:10]
        text = f"{text[:100]}..{digest}"
    return text


_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+)\}")


def fill_templates(values: dict[str, Any], point: dict[str, Any], where: str = "set") -> dict[str, Any]:
    """``set`` values may name the trial's grid keys in braces: ``model.weights: runs/s1/runs/data.target=
    {data.target},experiment.seed={experiment.seed}/checkpoints/best.pt`` links a second stage to the first
    stage's run of the same grid point (a source model per pair and seed). Values are written as in trial
    names; a dotted name in braces that is not a grid key of the trial is an error naming the valid ones."""
    flat = dict(_dotted(point))

    def fill(value: Any, key: str) -> Any:
        if not isinstance(value, str):
            return value

        def one(match: re.Match) -> str:
            if match.group(1) not in flat:
                raise SweepError(
                    f"{where}.{key}: '{{{match.group(1)}}}' names no grid key of the trial; grid keys: "
                    f"{', '.join(flat) or '(none)'}"
                )
            return _format(flat[match.group(1)])

        return _TEMPLATE.sub(one, value)

    return {k: fill(v, k) for k, v in values.items()}


def trial_tree(spec: SweepSpec, point: dict[str, Any], name: str) -> dict[str, Any]:
    """A trial's config tree: the files of ``config``, then ``set`` and the grid point together (the point
    wins, key by key), then the run folder. Laid over the files by :func:`~shiftlab.config.merge_config`:
    a method section (or ``method.name``) of ``set`` or the point that names another method than the files
    replaces their method section (``{name: adabn}`` over activation-matching keys is plain AdaBN); one
    naming the same method, or none, merges into it. ``set``'s method keys reach every trial, so a key
    that a grid's method lacks is an error naming it, never dropped silently."""
    tree: dict[str, Any] = {}
    for path in spec.config:
        tree = merge_config(tree, read_yaml(path))
    trial = merge(nest_dotted(fill_templates(spec.set, point)), nest_dotted(point))
    tree = merge_config(tree, trial)
    return merge(tree, nest_dotted({"experiment.output_dir": str(sweep_dir(spec) / "runs"), "experiment.name": name}))


def _config_for(spec: SweepSpec, point: dict[str, Any], name: str, where: str) -> Config:
    try:  # build_config also types the method's keys (after importing experiment.plugins)
        return build_config([], trial_tree(spec, point, name))
    except ShiftlabError as err:
        raise SweepError(f"{where}: {err}") from None


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of a grid or random-search sweep, validated, in a fixed order (Optuna's trials are
    proposed while the sweep runs: see :func:`grid_trials`)."""
    points = _grid_points(spec)
    if spec.search and spec.search.algorithm == "random":
        rng = np.random.default_rng(spec.search.seed)
        points = [{**p, **draw(spec.search.space, rng)} for p in points for _ in range(spec.search.num_samples)]
    return _trials(spec, points)


def grid_trials(spec: SweepSpec) -> list[Trial]:
    """The grid points alone (Optuna searches the sampled keys at each of them)."""
    return _trials(spec, _grid_points(spec))


def _trials(spec: SweepSpec, points: list[dict[str, Any]]) -> list[Trial]:
    trials, names = [], set()
    for point in points:
        name = trial_name(point)
        if name in names:
            raise SweepError(
                f"sweep '{spec.name}': two trials would share the run folder '{name}' (a grid list repeats a value?)"
            )
        names.add(name)
        cfg = _config_for(spec, point, name, f"sweep '{spec.name}', trial {name}")
        trials.append(Trial(name=name, point=point, config=cfg.to_dict()))
    return trials


def missing_weights(trials: list[Trial]) -> dict[str, Path]:
    """Trial name -> its ``model.weights`` file where that file does not exist (yet): a sweep whose trials
    start from another sweep's runs (``"{grid.key}"`` templates: SHOT, activation matching, AdapterNet)
    needs those runs first."""
    missing = {}
    for trial in trials:
        weights = trial.config.get("model", {}).get("weights")
        if weights is not None and not Path(weights).is_file():
            missing[trial.name] = Path(weights)
    return missing


def missing_weights_message(spec: SweepSpec, missing: dict[str, Path], of: int) -> str:
    """What :func:`missing_weights` found, in words: how many, the first few files, and what to do."""
    shown = "; ".join(f"{name} -> {path}" for name, path in list(missing.items())[:3])
    more = f"; and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (
        f"sweep '{spec.name}': {len(missing)} of {of} unfinished trials start from a model.weights file that "
        f"does not exist ({shown}{more}). Train those models first (the sweep file's comment names the command "
        f"or the sweep that writes them), or point model.weights at existing files."
    )


def check_sampled_keys(spec: SweepSpec) -> None:
    """A sampled key must be a valid config key: build one config with the space's first values."""
    if not spec.search:
        return
    first = {k: (d.get("choice") or [d[next(iter(d))][0]])[0] for k, d in spec.search.space.items()}
    _config_for(spec, {**(_grid_points(spec) or [{}])[0], **first}, "check", f"sweep '{spec.name}', search.space")


__all__ = [
    "SweepSpec",
    "SearchSpec",
    "Trial",
    "load_sweep",
    "sweep_dir",
    "expand",
    "grid_trials",
    "trial_name",
    "draw",
    "check_sampled_keys",
]
