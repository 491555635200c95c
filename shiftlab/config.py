"""Typed configuration: defaults, YAML files and ``--dotted.key=value`` overrides, composed in that order.

Every key is a pydantic field with a description, so ``shiftlab train --help`` lists every key with
its default and meaning, and a wrong key or value is an error that names it. A YAML file may start
from another with ``base: other.yaml`` (a path relative to the file), so one study's table is a small
base file plus one file per column.

A method's own hyperparameters (``method.*`` beside ``method.name``) are typed by the method's ``Params``
(:mod:`shiftlab.methods.base`): :func:`build_config` resolves them, so a wrong key fails before any data
is read and the resolved config (``config.yaml``) holds every one of them, defaults included. A method
section that names another method replaces the one underneath instead of merging into it
(:func:`merge_config`), since one method's keys mean nothing to another.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .data.decoded import LOADERS
from .errors import ConfigError
from .resources import find
from .selection.epochs import EPOCH_RULES
from .selection.validators import VALIDATORS
from .utils import did_you_mean, read_yaml_mapping

MAX_SEED = 2**63  # seeds are below it: what torch's and numpy's generators take (see ExperimentConfig.seed)
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExperimentConfig(Section):
    name: str = Field("demo", description="run folder name under output_dir; may contain '/' (e.g. baseline/cartoon)")
    output_dir: Path = Field(Path("runs"), description="folder that holds the run folders")
    seed: int = Field(0, description="seed of every random number generator (data order, init, augmentation)")
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules to import before the run "
        "(they register methods or datasets of your own), e.g. [my_lab.methods]",
    )

    @field_validator("name")
    @classmethod
    def _relative_run_name(cls, name: str) -> str:
        """A run name is a folder under output_dir: never the output folder itself, nor outside it."""
        parts = PurePath(name).parts
        if PurePath(name).anchor or ".." in parts or not parts:
            raise ValueError(
                "must be a relative folder name under experiment.output_dir such as 'baseline/cartoon' "
                "(not absolute, no '..' part, not '' or '.')"
            )
        return name

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, seed: int) -> int:
        # torch.manual_seed takes at most 64 bits, and the loop derives per-epoch seeds modulo 2**63
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"must be an integer from 0 to {MAX_SEED - 1} (2**63 - 1)")
        return seed


class DataConfig(Section):
    dataset: str = Field("demo", description="registered dataset (see `shiftlab datasets`), or folder:<Dataset>")
    root: Path | None = Field(None, description="data root; default $SHIFTLAB_DATA, else ./data (unused by 'demo')")
    source: str = Field(
        "digits",
        description="source domain: labelled training data; a derived domain is "
        "<domain>@<shift>(args), e.g. photo@greyscale (shifts: `shiftlab datasets`)",
    )
    target: str = Field(
        "digits_photo",
        description="target domain: evaluated, unlabelled unless the method says "
        "otherwise; may be derived, e.g. photo@brightness(-40), also from the source's domain",
    )
    source_train_split: str = Field(
        "train",
        description="source images trained on, with labels: train (default), or test for the whole "
        "domain (PACS: every image; the PACS DANN assignment's 'entire Photo dataset'), or a union such as "
        "train+val; source_val stays the val split, so where the two overlap source validation measures "
        "training images (select by another rule then: last, cross_domain)",
    )
    target_adapt_split: str | None = Field(
        None,
        description="target images an unsupervised method adapts on, without labels: "
        "train, val, test or a union such as train+val; null = the dataset's protocol (digits: train+val, the "
        "official training images; PACS, Office-Home, DomainNet, folder datasets, demo: test, the whole target)",
    )
    target_eval_split: str | None = Field(
        None,
        description="target split the reported number is measured on; null = the "
        "dataset's protocol (digits: the official test set; others: test, the whole domain). Methods that train "
        "on target labels are measured on the holdout",
    )
    target_holdout_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="when the eval split contains the target's train/val (transductive: PACS, "
        "folder datasets), this fraction of it, chosen by a hash of each file's path, is held out: labelled "
        "methods never train on it and are measured on it, every method is also evaluated on it",
    )
    strict_classes: bool = Field(
        False,
        description="a target with no images of some source classes is an error "
        "(default: a warning naming them; accuracy is then over the classes it has)",
    )
    skip_unreadable: bool = Field(
        False,
        description="decode every image before training and skip unreadable "
        "files, listed in skipped_files.txt (default: the first unreadable file stops "
        "the run, naming it)",
    )
    image_size: int | None = Field(
        None, ge=8, description="square input size in pixels; default 224 for photos, 32 for digits"
    )
    augment: bool = Field(
        True, description="random resized crops and flips on photo datasets (digits are only resized)"
    )
    batch_size: int = Field(64, ge=1, description="images per training batch (source and target each)")
    eval_batch_size: int | None = Field(None, ge=1, description="images per evaluation batch; default 2 x batch_size")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = load in the main process)")
    limit: int | None = Field(
        None, ge=1, description="keep at most this many images per split, evenly spaced (quick runs)"
    )
    loader: Literal[LOADERS] = Field(  # type: ignore[valid-type]
        "auto",
        description="'cached': decode each split once into uint8 tensors (kept under $SHIFTLAB_CACHE/decoded "
        "and in memory on the model's device) and augment batches there; 'files': a DataLoader decoding files "
        "each epoch; 'auto': cached when every split of the run fits data.cache_budget_gb",
    )
    cache_budget_gb: float | None = Field(
        None,
        gt=0,
        description="memory the decoded splits of one run may take with data.loader=auto; null = a "
        "quarter of the free memory where they live (GPU memory on CUDA, else RAM)",
    )
    target_train_limit: int | None = Field(
        None,
        ge=1,
        description="keep at most this many labelled target training images, evenly spaced (the "
        "same images for every seed and method), for methods that train on target labels (fine-tuning, "
        "AdapterNet: curves over the number of labelled samples); their val and test parts are unchanged. "
        "Ignored by methods that read no target label",
    )
    source_part: Literal["all", "classifier", "adapter"] = Field(
        "all",
        description="of the source domain's images (and of its cameras', which share their keys), learn and "
        "select only on one part of a fixed hash split: 'classifier' (a share data.source_part_fraction) or "
        "'adapter' (the rest), so that an adapter or fine-tuning run learns on images its classifier never saw "
        "(AdapterNet, Hazan et al. 2018, section 4); 'all': no split. Evaluated images are never changed",
    )
    source_part_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="share of the source domain's images in data.source_part's 'classifier' part "
        "(sha1 of 'source_part/<key>'); recorded in summary.json's splits",
    )

    @field_validator("target_adapt_split", "target_eval_split", "source_train_split")
    @classmethod
    def _known_splits(cls, value: str | None) -> str | None:
        parts = (value or "").split("+")
        if value is not None and (
            any(p not in ("train", "val", "test") for p in parts) or len(set(parts)) < len(parts)
        ):
            raise ValueError("must be train, val, test, a union such as train+val, or null for the dataset's protocol")
        return value


Channels = Annotated[list[float], Field(min_length=3, max_length=3)]


class ModelConfig(Section):
    name: str = Field(
        "resnet18",
        description="backbone: any torchvision classification model (resnet18, resnet50, "
        "alexnet, vgg16, efficientnet_b0, convnext_tiny, vit_b_16 ...: torchvision.models.list_models()) "
        "or small_cnn / dann_digits / lenet (digits; dann_digits is the DANN paper's MNIST network, lenet ADDA's "
        "LeNet, the deep activation matching authors' digits network)",
    )
    pretrained: str = Field(
        "none",
        description="'none', 'imagenet' (torchvision's DEFAULT weights) or a torchvision weights name such as IMAGENET1K_V1",
    )
    weights: Path | None = Field(
        None, description="local weights file: a torchvision state dict or a shiftlab checkpoint"
    )
    bottleneck_dim: int = Field(0, ge=0, description="size of a Linear-BN-ReLU bottleneck before the head (0 = none)")
    head_layers: int = Field(
        1,
        ge=1,
        description="how many of the model's last Linear layers form the head: AlexNet/VGG "
        "3 = fc6, fc7, fc8 in the head (features end at the conv part), 1 = fc8 only",
    )
    mean: Channels | None = Field(
        None,
        description="per-channel mean the model subtracts from [0, 1] images, e.g. "
        "[0.5,0.5,0.5]; default the dataset family's (photos: ImageNet's, digits: 0.5)",
    )
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)] | None = Field(
        None,
        description="per-channel std the model divides [0, 1] images by; default the dataset family's "
        "(photos: ImageNet's, digits: 0.5)",
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from .models.backbones import check_model_name

        return check_model_name(name)


class MethodConfig(BaseModel):
    """``method.name`` and the method's own keys (extra keys here, typed by the method's ``Params``;
    :func:`resolve_method` validates them and fills in their defaults)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = Field("source_only", description="method to train (see the list of methods below)")

    def params(self) -> dict[str, Any]:
        """Every key of the method but ``name``: what ``build_method`` takes (after :func:`build_config`,
        every key of the method's ``Params`` with its value, defaults included)."""
        return dict(self.model_extra or {})


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="optimiser (the one list of names: engine.optim reads it)"
    )
    lr: float = Field(
        0.01, gt=0, description="base learning rate (heads); the feature extractor gets lr x feature_lr_mult"
    )
    feature_lr_mult: float = Field(
        1.0, ge=0, description="learning-rate multiplier of the feature extractor (0.1 is usual with ImageNet weights)"
    )
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay")
    schedule: Literal["constant", "step", "cosine", "inverse"] = Field(
        "constant",
        description="learning-rate schedule over all steps: 'step' multiplies by gamma from step_at of "
        "training on; 'inverse' is lr/(1+alpha*p)^beta (Ganin & Lempitsky 2015: alpha 10, "
        "beta 0.75), p the training progress 0->1 or the step count (see inverse_per)",
    )
    step_at: float = Field(
        0.8, gt=0, le=1, description="fraction of training after which 'step' decays the learning rate"
    )
    gamma: float = Field(0.1, gt=0, description="decay factor of the 'step' schedule")
    alpha: float = Field(
        10.0,
        ge=0,
        description="rate of the 'inverse' schedule: 10 per unit of progress (DANN); "
        "per step with inverse_per=step (ToAlign 5e-4; the CDAN and HDA codes 1e-3)",
    )
    beta: float = Field(0.75, ge=0, description="power of the 'inverse' schedule")
    inverse_per: Literal["progress", "step"] = Field(
        "progress",
        description="what p counts in the 'inverse' schedule: 'progress' (0 -> 1 over training, DANN's "
        "form) or 'step' (optimiser steps, lr0*(1+alpha*step)^-beta, the per-iteration form)",
    )


class TrainConfig(Section):
    epochs: int = Field(10, ge=0, description="training epochs (0 = evaluate the given model only)")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="cap on steps per epoch (default: one pass over the main stream)"
    )
    exact_steps: bool = Field(
        False,
        description="train.steps_per_epoch is the exact number of steps of every epoch, the main stream "
        "cycling when it is shorter, so that methods whose main stream differs (the target oracle trains on "
        "the target's images) or pairs whose source is small (USPS) get the same budget; default: a cap",
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', 'mps'")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto' = bf16 autocast on GPUs that support it, fp32 elsewhere"
    )
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (the last epoch is always evaluated)")
    selection: Literal[("auto", *EPOCH_RULES)] = Field(  # type: ignore[valid-type]
        "auto",
        description="rule that picks the reported epoch and checkpoints/best.pt: 'source_val' (best source "
        "validation accuracy, reads no target label), 'target_val' (best accuracy on the labelled "
        "target validation part; only for methods that train on target labels), 'last', "
        "'entropy' / 'im' / 'snd' (best unsupervised validator score on the unlabelled target "
        "adaptation images; see train.validators), 'target_oracle' (best target accuracy: ORACLE, "
        "reads target labels). 'auto' = target_val for methods trained on target labels, else "
        "source_val. Every rule's choice is recorded in summary.json whatever this key says",
    )
    validators: list[Literal[tuple(VALIDATORS)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["entropy", "im", "snd"],
        description="unsupervised validators computed at every evaluation from the model's predictions on the "
        "target's adaptation images, without labels (metrics unsup_<name>, higher is better): "
        "'entropy' (Morerio et al., ICLR 2018), 'im' information maximisation (Gomes et al., NeurIPS "
        "2010), 'snd' soft neighborhood density (Saito et al., ICCV 2021). [] skips the extra pass",
    )
    validator_limit: int | None = Field(
        10_000,
        ge=1,
        description="score the validators on at most this many target adaptation images, a fixed "
        "subset (seed 0, the same for every epoch, method, seed and resume; recorded in summary.json) instead of "
        "a full pass (MNIST's 60,000); null = every image",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="stop when the metric of train.selection (target_val: target_val_acc; source_val: "
        "source_val_acc; a validator: its score) has not improved for this many evaluations; null = train "
        "every epoch. Not with selection 'last'",
    )
    compile: bool = Field(
        False, description="torch.compile the backbone (pays a compilation at the start; worth it for long GPU runs)"
    )
    channels_last: bool | None = Field(
        None,
        description="channels-last memory format for the model and its inputs; "
        "null = on CUDA only (faster convolutions with bf16 there). On this project's CPU it speeds the "
        "digits networks' training steps about 1.5x and slows ResNet-18 (benchmarks/channels_last.py): "
        "configs/dann/digits_base.yaml and the LeNet config set it",
    )
    deterministic: bool = Field(
        True, description="deterministic algorithms, so a resumed CPU run matches an uninterrupted one"
    )
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
            raise ValueError(f"unknown device; valid: {', '.join(DEVICES)}, or cuda:N for GPU number N (e.g. cuda:1)")
        return device


class Config(Section):
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- composing


def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a nested dict, with ``base:`` files merged underneath. ``path`` (and a ``base:``)
    may also name a config shipped with shiftlab (:mod:`shiftlab.resources`): ``demo``, ``dann/mnist_to_usps``."""
    path = find("configs", path, ConfigError)  # a path that exists, else a config shipped with shiftlab
    if path.resolve() in _seen:
        raise ConfigError(f"config files include each other in a loop: {' -> '.join(map(str, _seen + (path,)))}")
    data = read_yaml_mapping(path, "config file", ConfigError)
    base = data.pop("base", None)
    if base:
        base = find("configs", base, ConfigError, relative_to=path.parent)  # relative to the file, else shipped
        data = merge_config(read_yaml(base, _seen + (path.resolve(),)), data)
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section (nested dicts merge, other values replace)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Config tree ``update`` over ``base`` (:func:`merge`), except that a method section naming another
    method than ``base``'s replaces it whole: ``{method: {name: adabn}}`` over a ``dann`` section drops the
    dann keys, while ``{method: {lambda_: 0.1}}`` or ``{method: {name: dann, ...}}`` merges into it. This
    holds for every layer: ``base:`` files, config files, a sweep's ``set`` with its grid point, overrides.
    A section without a name merges whatever lies beneath."""
    out = merge(base, update)
    if _names_another_method(base.get("method"), update.get("method")):
        out["method"] = dict(update["method"])
    return out


def _names_another_method(base: Any, update: Any) -> bool:
    # a base section without a name is a partial layer (its method comes from further down): it merges,
    # so its keys meet the method that is named and fail there if foreign, rather than vanish
    if not isinstance(update, dict) or "name" not in update or not isinstance(base, dict) or "name" not in base:
        return False
    return update["name"] != base["name"]


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--data.root=/x", "--train.epochs", "3"]`` -> nested dict of raw strings."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(
                f"unexpected argument {arg!r}: overrides look like --section.key=value (see `shiftlab train --help`)"
            )
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"override --{key} has no value")
            value = args[i + 1]
            i += 1
        _set_dotted(out, key, value)
        i += 1
    return out


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{key}': '{p}' is a value, not a section")
    node[leaf] = value


def nest_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 3, "data": {"root": "/x"}}`` -> a nested tree (dotted keys split into sections)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, dict) and "." not in key:
            out[key] = merge(out.get(key, {}), nest_dotted(value))
        else:
            _set_dotted(out, key, value)
    return out


def _coerce(value: Any, annotation: Any) -> Any:
    """Turn a command-line string into the field's type where pydantic would not (null, lists, mappings)."""
    if not isinstance(value, str):
        return value
    allows_none = annotation is None or type(None) in get_args(annotation)
    if value.lower() in ("null", "none", "~", "") and allows_none:
        return None
    if annotation is str or get_origin(annotation) is Literal:
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _coerce_tree(values: dict[str, Any], model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is None:
            if model.model_config.get("extra") == "allow":
                out[key] = _coerce(value, None)
                continue
            extra = did_you_mean(key, model.model_fields, prefix=prefix)
            valid = ", ".join(prefix + k for k in model.model_fields)
            raise ConfigError(f"unknown config key '{prefix}{key}'.{extra} Valid keys here: {valid}")
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            if not isinstance(value, dict):
                raise ConfigError(f"'{prefix}{key}' is a section; set its keys as {prefix}{key}.<key>=value")
            out[key] = _coerce_tree(value, sub, f"{prefix}{key}.")
        else:
            out[key] = _coerce(value, sub)
    return out


def build_config(
    files: list[str | os.PathLike] = (),
    overrides: list[str] | dict[str, Any] = (),
    start: dict[str, Any] | None = None,
    *,
    resume: bool = False,
) -> Config:
    """Defaults <- ``start`` <- each YAML file <- command-line overrides, then ``method.*`` typed by the
    method's ``Params`` (:func:`resolve_method`). Layers compose by :func:`merge_config`: a method section
    naming another method replaces the one beneath; the files and overrides are composed first, then
    laid over ``start``.

    ``resume=True``: the run folder's saved ``config.yaml`` (if any) becomes ``start``, so a resumed run
    keeps its settings and only what is given again here changes. Relative paths (``output_dir``,
    ``data.root``, ``model.weights``) are made absolute against the current folder, and an unset data
    root is resolved (``$SHIFTLAB_DATA``, else ``./data``), so the config means the same from any folder
    or worker process.
    """
    overrides = nest_dotted(overrides) if isinstance(overrides, dict) else parse_overrides(list(overrides))
    given: dict[str, Any] = {}
    for f in files:
        given = merge_config(given, read_yaml(f))
    # composed before ``start`` is laid under it: a resumed run's method keys survive files that name
    # another method when the overrides name the run's method again (only what is given changes)
    given = merge_config(given, overrides)
    cfg = resolve_paths(validate(merge_config(dict(start or {}), given)))
    if resume:  # the method's keys are typed once the saved config is under them (they may need its name)
        saved = run_dir(cfg) / "config.yaml"
        if saved.is_file():
            return build_config(files, overrides, start=merge_config(read_yaml(saved), start or {}))
    return resolve_method(cfg)


def import_plugins(modules: list[str]) -> None:
    """Import the modules of ``experiment.plugins`` (they register methods or datasets of their own)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"experiment.plugins: cannot import '{name}': {err}") from err


def resolve_method(cfg: Config) -> Config:
    """``cfg.method`` typed by the method's ``Params``: every key with its value, defaults filled in.
    The plugins of ``experiment.plugins`` are imported first (they may register the method); an unknown
    method, key or value is a :class:`ConfigError` naming it and the method's valid keys."""
    from .methods import method_params  # late: importing every method builds torchvision models

    import_plugins(cfg.experiment.plugins)
    params = method_params(cfg.method.name, cfg.method.params())
    cfg.method = MethodConfig(name=cfg.method.name, **params.model_dump())
    return cfg


def run_dir(cfg: Config) -> Path:
    """The run folder: ``<experiment.output_dir>/<experiment.name>``."""
    return Path(cfg.experiment.output_dir) / cfg.experiment.name


def resolve_paths(cfg: Config) -> Config:
    """Relative paths made absolute, and the default data root resolved (see :func:`build_config`)."""
    from .data.cache import data_root

    cfg.experiment.output_dir = Path(cfg.experiment.output_dir).expanduser().absolute()
    cfg.data.root = data_root(cfg.data.root).absolute()
    if cfg.model.weights is not None:
        cfg.model.weights = Path(cfg.model.weights).expanduser().absolute()
    return cfg


def validate(tree: dict[str, Any]) -> Config:
    try:
        return Config(**_coerce_tree(tree, Config))
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(map(str, e["loc"]))
            problems.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError("invalid config: " + "; ".join(problems)) from None


def describe(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, description)`` for every key, for ``--help``."""
    rows = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            rows += describe(sub, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        choices = get_args(sub) if get_origin(sub) is Literal else ()
        text = field.description or ""
        if choices:
            text += f" [{', '.join(map(str, choices))}]"
        rows.append((prefix + name, "null" if default is None else str(default), text))
    return rows
