"""Using a trained model: :func:`load_run` gives back exactly what a run evaluated, ``predict`` uses it.

/work/shared/DESIGN.md, "Using a trained model": ``load_run(path)`` restores the checkpoint, the model's own
normalisation and input size, and whatever the method adds at inference, so that ``predict``, ``shiftlab
predict`` and ``shiftlab export`` (:mod:`shiftlab.export`) cannot disagree with the run's own numbers. The
checkpoint is read through :func:`shiftlab.checkpoints.load_checkpoint` only.

What each built-in method adds at inference, and where it comes from:

=====================================  =============================================================  ==========
method                                 inference state                                                data
=====================================  =============================================================  ==========
source_only, dann, dannp, hda,         the weights (state dict)                                       no
finetune, oracle
adapternet                             the adapter before the frozen classifier (state dict           no
                                       ``adapter.*``; ``predict = classifier(adapter(x))``)
activation_shaping                     hooks rebuilt from ``method.*``; with ``at_eval`` they shape   no
                                       at inference too (``maps=target``: the evaluated batch's own
                                       activation; ``maps=random``: fresh random masks at every call,
                                       so predictions are random, as the run's evaluation was)
activation_matching                    F_t (state dict); with ``method.gaussian=true`` the target     no
                                       moments measured at the checkpoint's evaluation, which the
                                       checkpoint holds (``matcher.target_*``), switched on
adabn                                  every BatchNorm's statistics re-estimated on the run's target  **target**
                                       adaptation images (``before_evaluation("target", ...)``)
gaussian_matching                      source moments measured on the run's ``source_val`` images,    **source
                                       target moments on its target adaptation images, layer by      and
                                       layer (the matcher is not in the state dict)                   target**
a plugin method that overrides         the training loop's evaluation protocol replayed (source pass, **source
``before_evaluation``                  then ``before_evaluation("target", ...)``)                     and target**
=====================================  =============================================================  ==========

Methods marked **data** read the images the run read, rebuilt from its data config (same dataset,
domains, splits and ``data.limit``) under ``data.root`` (or ``data_root=``); where they cannot be read,
:class:`~shiftlab.errors.InferenceDataError` says so. The demo dataset is embedded and always readable.

Preprocessing equals the run's evaluation transform (:func:`shiftlab.data.transforms.build_transforms`):
the image in RGB, ``Resize((S, S))`` by PIL (bilinear, squashing to a square), then ``[0, 1]`` floats;
``S`` is ``data.image_size`` or the family's size (photos 224, digits 32). Normalisation is the model's
first module (its mean and std are in the checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .checkpoints import load_checkpoint
from .config import Config, build_config, read_yaml
from .data.base import load_rgb, path_text
from .data.transforms import FAMILY_SIZES, build_transforms
from .errors import DataError, InferenceDataError, PredictInputError, RunModelError, ShiftlabError

CHECKPOINTS = ("best", "last")
# Built-in methods whose inference state is computed at evaluation from images (see the module docstring):
# the domains whose images they read. Every other built-in method's state is in its checkpoint.
EVALUATION_DATA: dict[str, tuple[str, ...]] = {"adabn": ("target",), "gaussian_matching": ("source", "target")}
BUILTIN_FROM_CHECKPOINT = frozenset(
    {
        "source_only",
        "dann",
        "dannp",
        "hda",
        "finetune",
        "oracle",
        "adapternet",
        "activation_shaping",
        "activation_matching",
    }
)


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Predictions:
    """Softmax outputs of ``predict``: ``classes`` (predicted name per image), ``probs`` ((N, C) float32, in the
    order of ``class_names``), ``logits``, ``paths`` (the inputs' paths or keys, where known)."""

    class_names: list[str]
    logits: torch.Tensor
    paths: list[str | None] = field(default_factory=list)

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits.float(), dim=1)

    @property
    def indices(self) -> list[int]:
        return self.logits.argmax(1).tolist()

    @property
    def classes(self) -> list[str]:
        return [self.class_names[i] for i in self.indices]

    @property
    def confidence(self) -> list[float]:
        """The probability of each predicted class."""
        return self.probs.max(1).values.tolist()

    def top_k(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the ``k`` most probable ``(class name, probability)``, most probable first."""
        if k < 1:
            raise PredictInputError(f"top_k: k must be at least 1, got {k}")
        values, idx = self.probs.topk(min(k, len(self.class_names)), dim=1)
        return [
            [(self.class_names[j], float(p)) for j, p in zip(row_i.tolist(), row_p.tolist())]
            for row_i, row_p in zip(idx, values)
        ]

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, i: int) -> dict[str, Any]:
        probs = self.probs[i]
        j = int(probs.argmax())
        return {
            "path": self.paths[i] if self.paths else None,
            "class": self.class_names[j],
            "prob": float(probs[j]),
            "probs": dict(zip(self.class_names, probs.tolist())),
        }

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# ------------------------------------------------------------------------------------------------ the model


class RunModel:
    """A run's model as it was evaluated (see :func:`load_run`): ``predict(images)``, ``logits(x)``.

    Attributes: ``run_dir``, ``checkpoint`` (its path), ``epoch``, ``config`` (the run's
    :class:`~shiftlab.config.Config`), ``classes`` (output order), ``image_size``, ``family``, ``device``,
    ``method`` (the :class:`~shiftlab.methods.Method`, in eval mode, inference state restored),
    ``transform`` (the run's evaluation transform of one PIL image), ``config_hash``.
    """

    def __init__(
        self,
        *,
        method,
        config: Config,
        classes: list[str],
        image_size: int,
        family: str,
        run_dir: Path,
        checkpoint: Path,
        epoch: int | None,
        device: torch.device,
        config_dict: dict,
    ):
        self.method, self.config, self.classes = method, config, list(classes)
        self.image_size, self.family, self.device = image_size, family, device
        self.run_dir, self.checkpoint, self.epoch = run_dir, checkpoint, epoch
        self.transform = build_transforms(family, image_size, augment=False)[1]
        self.config_hash = config_hash(config_dict)
        self.batch_size = config.data.eval_batch_size or 2 * config.data.batch_size  # the run's evaluation batches

    def __repr__(self) -> str:
        return (
            f"RunModel({path_text(self.run_dir)!r}, checkpoint={self.checkpoint.name}, method="
            f"{self.config.method.name}, model={self.config.model.name}, {len(self.classes)} classes, "
            f"{self.image_size}px, device={self.device})"
        )

    # -- preprocessing

    def preprocess(self, images) -> torch.Tensor:
        """``images`` (one or a list of paths, PIL images, uint8 tensors (3, H, W) / batches (N, 3, H, W), or
        float tensors in [0, 1] already at the input size) -> float (N, 3, S, S) in [0, 1], as the run's
        evaluation transform makes them. A uint8 tensor of another size is resized through PIL, as a file is."""
        return torch.cat([self._one(item) for item in _as_items(images)])

    def _one(self, item) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            return self.transform(load_rgb(Path(item)))[None]
        if isinstance(item, Image.Image):
            return self.transform(item.convert("RGB"))[None]
        if isinstance(item, torch.Tensor):
            return self._tensor(item)
        raise PredictInputError(f"predict takes paths, PIL images or image tensors, got {type(item).__name__}")

    def _tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu()
        x = x[None] if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise PredictInputError(f"an image tensor must be (3, H, W) or (N, 3, H, W), got shape {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # greyscale as PIL's convert("RGB") makes it
        size = (self.image_size, self.image_size)
        if x.dtype == torch.uint8:
            if tuple(x.shape[2:]) == size:  # PIL's resize to the same size is a copy: no need to go through it
                return x.float().mul_(1 / 255)  # float32(v) * float32(1/255), bit for bit ToUnitTensor's
            return torch.stack([self.transform(Image.fromarray(im.permute(1, 2, 0).contiguous().numpy())) for im in x])
        if x.is_floating_point():
            if tuple(x.shape[2:]) != size:
                raise PredictInputError(
                    f"a float image tensor must already be {self.image_size}x{self.image_size} "
                    f"(got {x.shape[2]}x{x.shape[3]}): give uint8 tensors, paths or PIL images, "
                    f"which are resized as the run resized them"
                )
            if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
                raise PredictInputError(
                    "a float image tensor must hold values in [0, 1] (the model normalises "
                    "them itself); give uint8 images for 0..255"
                )
            return x.float()
        raise PredictInputError(f"image tensors must be uint8 or float in [0, 1], got {x.dtype}")

    # -- inference

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (on the CPU, float32) of preprocessed images: float (N, 3, S, S) in [0, 1]."""
        self.method.eval()
        return self.method.predict(x.to(self.device)).float().cpu()

    def predict(self, images, *, batch_size: int | None = None, progress: bool = False) -> Predictions:
        """Class names and probabilities for ``images`` (see :meth:`preprocess`), in batches of ``batch_size``
        (default: the run's evaluation batch)."""
        items = _as_items(images)
        bs = batch_size or self.batch_size
        chunks = [items[i : i + bs] for i in range(0, len(items), bs)]
        out = [self.logits(self.preprocess(c)) for c in _bar(chunks, progress, "predict")]
        paths = [path_text(i) if isinstance(i, (str, os.PathLike)) else None for i in items]
        return Predictions(self.classes, torch.cat(out) if out else torch.zeros(0, len(self.classes)), paths)

    __call__ = predict

    # -- the run's own images

    def domain_images(self, domain: str = "target") -> tuple[Dataset, list[str]]:
        """The run's target evaluation split of ``domain`` ("target": the run's target; any other domain of the
        run's dataset: the same protocol with that target), labelled, with the run's transform, and its keys."""
        from .data.splits import keys_of

        target = self.config.data.target if domain == "target" else domain
        pair = _data(self.config, target, f"predicting on domain '{domain}' reads the run's images")
        return pair.target_eval, keys_of(pair.target_eval.base)

    def evaluate(
        self, domain: str = "target", *, batch_size: int | None = None, progress: bool = False
    ) -> tuple[Predictions, list[int], float]:
        """Predictions on :meth:`domain_images`, their labels, and the accuracy (what the run's summary.json
        reports as ``target_acc`` for its own target, at this checkpoint's epoch)."""
        from .data.pair import make_loader

        dataset, keys = self.domain_images(domain)
        loader = make_loader(
            dataset, batch_size or self.batch_size, shuffle=False, num_workers=self.config.data.num_workers
        )
        logits, labels = [], []
        for x, y in _bar(loader, progress, f"predict {domain}"):
            logits.append(self.logits(x))
            labels += y.tolist()
        preds = Predictions(self.classes, torch.cat(logits), keys)
        correct = sum(int(p == y) for p, y in zip(preds.indices, labels))
        return preds, labels, correct / len(labels)


# ------------------------------------------------------------------------------------------------ loading


def load_run(
    run: str | os.PathLike,
    checkpoint: str = "best",
    *,
    device: str | torch.device | None = None,
    data_root: str | os.PathLike | None = None,
) -> RunModel:
    """The model of run folder ``run`` as the run evaluated it at ``checkpoint`` ("best": ``checkpoints/best.pt``,
    the epoch of the run's selection rule; "last": ``checkpoints/last.pt``).

    ``device``: default the run's ``train.device`` (``auto``: CUDA where available). ``data_root``: where the
    run's data is, for the methods whose inference state is computed from images (AdaBN, Gaussian matching:
    see the module docstring); default the run's ``data.root``.
    """
    from .engine.loop import resolve_device
    from .methods import build_method, get_method
    from .models import build_backbone, normalization_for

    run = Path(run)
    path = checkpoint_path(run, checkpoint)
    try:
        state = load_checkpoint(path)
    except ShiftlabError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise RunModelError(
            f"cannot read {path_text(path)}: {type(err).__name__}: {str(err).splitlines()[0][:160]}; "
            f"the file is damaged: use the other checkpoint (--checkpoint) or train again"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise RunModelError(f"{path_text(path)} is not a shiftlab training checkpoint (no 'model' weights)")
    config_dict = state.get("config") or _saved_config(run)
    cfg = build_config([], {}, start=config_dict)
    if data_root is not None:
        cfg.data.root = Path(data_root).expanduser().absolute()
    name = cfg.method.name
    method_cls = get_method(name)
    family = state.get("family") or _spec(cfg).family
    image_size = state.get("image_size") or cfg.data.image_size or FAMILY_SIZES[family]
    classes = state.get("classes") or list(_spec(cfg).classes)
    target_device = resolve_device(str(device) if device is not None else cfg.train.device)

    m = cfg.model
    mean, std = normalization_for(family, m.name)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's random stream alone
        backbone = build_backbone(
            m.name,
            len(classes),
            pretrained="none",
            weights=None,
            bottleneck_dim=m.bottleneck_dim,
            head_layers=m.head_layers,
            mean=m.mean or mean,
            std=m.std or std,
            progress=False,
        )
        method = build_method(name, backbone, cfg.method.params(), feature_lr_mult=cfg.optim.feature_lr_mult)
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as err:
        raise RunModelError(
            f"{path_text(path)} does not fit method '{name}' with model '{m.name}' and "
            f"{len(classes)} classes: {str(err).splitlines()[0]}"
        ) from None
    method.to(target_device).eval()
    model = RunModel(
        method=method,
        config=cfg,
        classes=classes,
        image_size=image_size,
        family=family,
        run_dir=run,
        checkpoint=path,
        epoch=state.get("epoch"),
        device=target_device,
        config_dict=config_dict,
    )
    restore_inference_state(model, method_cls)
    return model


def checkpoint_path(run: Path, checkpoint: str) -> Path:
    """``<run>/checkpoints/<best|last>.pt``, existing; errors name the run folder and what to do."""
    if checkpoint not in CHECKPOINTS:
        raise RunModelError(f"checkpoint '{checkpoint}': valid are {', '.join(CHECKPOINTS)}")
    if not run.is_dir():
        raise RunModelError(f"run folder {path_text(run)} does not exist (give runs/<experiment.name>)")
    path = run / "checkpoints" / f"{checkpoint}.pt"
    if path.is_file():
        return path
    if checkpoint == "best" and (run / "checkpoints" / "last.pt").is_file():
        raise RunModelError(
            f"{path_text(path)} does not exist (no epoch was selected yet, or the run predates "
            f"best.pt): use checkpoint 'last' (--checkpoint last)"
        )
    raise RunModelError(
        f"{path_text(path)} does not exist: {path_text(run)} is not a finished shiftlab run "
        f"(no checkpoint; train it, or --resume it)"
    )


def _saved_config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    if not path.is_file():
        raise RunModelError(f"neither the checkpoint nor {path_text(path)} holds the run's config")
    return read_yaml(path)


def _spec(cfg: Config):
    from .data.registry import get_dataset

    return get_dataset(cfg.data.dataset, cfg.data.root)


def config_hash(config: dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the run's resolved config as canonical JSON: names the run's settings in
    exported files, so a file can be matched to the run it came from."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def needs_data(method) -> tuple[str, ...]:
    """The domains whose images ``method``'s inference state is computed from (empty: all in the checkpoint)."""
    name = type(method).name
    if name in EVALUATION_DATA:
        return EVALUATION_DATA[name]
    if name in BUILTIN_FROM_CHECKPOINT:
        return ()
    from .methods import Method

    # a method of a plugin: if it does anything before evaluation, replay the loop's whole evaluation protocol
    return ("source", "target") if type(method).before_evaluation is not Method.before_evaluation else ()


def restore_inference_state(model: RunModel, method_cls) -> None:
    """Bring ``model.method`` into the state the run evaluated it in (see the module docstring)."""
    method, cfg = model.method, model.config
    domains = needs_data(method)
    if method_cls.name == "activation_matching" and getattr(method, "matcher", None) is not None:
        method.matcher.active = True  # the checkpoint holds the target moments of its own evaluation
    if not domains:
        return
    from .data.pair import make_loader

    pair = _data(
        cfg,
        cfg.data.target,
        f"method '{cfg.method.name}' computes its inference state from the run's {' and '.join(domains)} images",
        method_cls,
    )
    bs = model.batch_size
    # the evaluator's order: the source pass (which e.g. Gaussian matching records its source moments from), then
    # the target's adaptation images handed to before_evaluation("target", ...)
    method.before_evaluation("source", None)
    try:
        if "source" in domains:
            for x, _ in make_loader(pair.source_val, bs, shuffle=False, num_workers=cfg.data.num_workers):
                model.logits(x)
    finally:
        method.after_evaluation()
    images = make_loader(pair.target_adapt_images, bs, shuffle=False, num_workers=cfg.data.num_workers)
    with torch.no_grad():
        method.before_evaluation("target", images)


def _data(cfg: Config, target: str, why: str, method_cls=None):
    """The run's domain pair (with ``target``), built as the run built it; unreadable data is one line naming
    ``why`` the images are needed, the dataset and the data root."""
    from .engine.loaders import build_pair
    from .methods import get_method

    d = cfg.data
    method_cls = method_cls or get_method(cfg.method.name)
    try:
        return build_pair(cfg, method_cls, target)  # the run's own pair: the loop's function, so they agree
    except (DataError, OSError) as err:
        raise InferenceDataError(
            f"{why} (dataset '{d.dataset}', source '{d.source}', target '{target}', data.root={path_text(d.root)}), "
            f"which cannot be read: {str(err).splitlines()[0]}; give the data root the run was trained with "
            f"(load_run(..., data_root=...), --data-root)"
        ) from None


def _as_items(images) -> list:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, torch.Tensor):
        return [images] if images.dim() <= 3 else list(images.split(1))
    if isinstance(images, np.ndarray):
        raise PredictInputError(
            "give NumPy images as torch.from_numpy(array).permute(...) uint8 (N, 3, H, W), or as PIL images"
        )
    try:
        return list(images)
    except TypeError:
        raise PredictInputError(
            f"predict takes paths, PIL images or image tensors, got {type(images).__name__}"
        ) from None


def _bar(iterable: Iterable, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------ shiftlab predict


PREDICT_EPILOG = """\
examples:
  shiftlab predict --run runs/demo/adabn --images target --out preds.csv            # the run's target, with accuracy
  shiftlab predict --run runs/ash/cartoon --images sketch --out sketch.csv --top-k 3 # another domain of its dataset
  shiftlab predict --run runs/demo/adabn --checkpoint last --images my_photos/ --out mine.csv --skip-unreadable

Writes OUT (one row per image: path, predicted, probability, top1, top1_prob, ... topK, topK_prob; for a domain
also label and correct), OUT with suffix .json (what was predicted, and for a domain the accuracy beside the
one the run's summary.json reports for that checkpoint) and, when files were skipped, OUT with suffix
.unreadable.txt. AdaBN and Gaussian matching runs read the run's own images to restore their inference
state (see shiftlab.inference), so they need the run's data under --data-root (default: the run's data.root).
"""


def predict_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="shiftlab predict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=PREDICT_EPILOG,
        description="Predict classes with a trained run's model exactly as the run evaluated it (its checkpoint, "
        "its evaluation resize, normalisation and the method's inference state) and write a CSV.",
    )
    p.add_argument("--run", required=True, metavar="RUN", help="the run folder (runs/<experiment.name>)")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=CHECKPOINTS,
        help="best: checkpoints/best.pt, the epoch the run's selection rule chose (default); "
        "last: checkpoints/last.pt, the final epoch",
    )
    p.add_argument(
        "--images",
        required=True,
        metavar="DIR_OR_DOMAIN",
        help="a folder of images (searched recursively; every file PIL reads by its extension), or a "
        "domain of the run's dataset: 'target' (the run's target) or a name such as 'cartoon', "
        "meaning that domain's target evaluation split under the run's data settings; a domain is "
        "labelled, so the accuracy is printed and recorded too",
    )
    p.add_argument("--out", required=True, metavar="CSV", help="the CSV file to write (its folder is created)")
    p.add_argument(
        "--top-k",
        type=int,
        default=5,
        metavar="K",
        help="how many most probable classes each row lists (default 5, at most the number of classes)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="images per forward pass (default: the run's evaluation batch size)",
    )
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out files that cannot be decoded (listed in OUT.unreadable.txt and counted) instead "
        "of stopping at the first with an error that names it",
    )
    p.add_argument(
        "--device", default=None, metavar="D", help="cpu, cuda, cuda:1, mps or auto (default: the run's train.device)"
    )
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="where the run's dataset is, for a domain and for methods that re-read the run's images "
        "(default: the run's data.root)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def image_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (recursively, sorted, hidden ones left out) whose extension PIL can read."""
    readable = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in readable
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def predict_command(argv: list[str]) -> int:
    """``shiftlab predict`` (see :func:`predict_parser`)."""
    from .utils import atomic_write_text, write_json

    args = predict_parser().parse_args(argv)
    if args.top_k < 1:
        raise PredictInputError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size is not None and args.batch_size < 1:
        raise PredictInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    model = load_run(args.run, args.checkpoint, device=args.device, data_root=args.data_root)
    out, progress = Path(args.out), not args.no_progress
    folder = Path(args.images)
    record: dict[str, Any] = {
        "run": path_text(model.run_dir),
        "checkpoint": model.checkpoint.name,
        "epoch": model.epoch,
        "images": args.images,
    }
    unreadable: list[str] = []
    if folder.is_dir():
        preds = _predict_folder(model, folder, args.batch_size, args.skip_unreadable, unreadable, progress)
        labels = None
    else:
        domain = _check_domain(model, args.images)
        preds, labels, accuracy = model.evaluate(domain, batch_size=args.batch_size, progress=progress)
        reported = _reported_accuracy(model, domain)
        record.update(
            {
                "domain": domain,
                "accuracy": accuracy,
                "correct": round(accuracy * len(labels)),
                "total": len(labels),
                "run_reported_accuracy": reported,
            }
        )
        print(
            f"accuracy {accuracy:.4f} ({record['correct']}/{len(labels)}) on the target evaluation split of "
            f"'{model.config.data.target if domain == 'target' else domain}'"
            + (f"; the run reported {reported:.4f} for checkpoint {args.checkpoint}" if reported is not None else "")
        )
    atomic_write_text(out, predictions_csv(preds, args.top_k, labels))
    record["predicted"] = len(preds)
    if unreadable:
        record["unreadable"] = len(unreadable)
        atomic_write_text(out.with_suffix(".unreadable.txt"), "\n".join(unreadable) + "\n")
        print(f"{len(unreadable)} unreadable file(s) skipped: listed in {out.with_suffix('.unreadable.txt')}")
    write_json(out.with_suffix(".json"), record)
    print(f"{len(preds)} prediction(s) in {out}")
    return 0


def _check_domain(model: RunModel, name: str) -> str:
    if name == "target":
        return name
    spec = _spec(model.config)
    try:
        spec.validate_domain(name, "--images")
    except DataError as err:
        raise PredictInputError(
            f"--images {name} is not a folder, and not a domain of the run's dataset "
            f"'{spec.name}': {str(err).splitlines()[0]}"
        ) from None
    return "target" if name == model.config.data.target else name


def _reported_accuracy(model: RunModel, domain: str) -> float | None:
    """What the run's summary.json reports for its target at this checkpoint (None for another domain)."""
    path = model.run_dir / "summary.json"
    if domain != "target" or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary.get("target_acc" if model.checkpoint.name == "best.pt" else "final_target_acc")


def _predict_folder(
    model: RunModel, folder: Path, batch_size: int | None, skip: bool, unreadable: list[str], progress: bool
) -> Predictions:
    files = image_files(folder)
    if not files:
        raise PredictInputError(
            f"--images {path_text(folder)}: no image files in it or below it (extensions PIL "
            f"reads, e.g. .jpg .png .bmp .tif .webp)"
        )
    bs = batch_size or model.batch_size
    logits, paths = [], []
    for start in _bar(range(0, len(files), bs), progress, "predict"):
        batch = []
        for path in files[start : start + bs]:
            try:
                batch.append(model.transform(load_rgb(path)))
            except DataError as err:
                if not skip:
                    raise PredictInputError(
                        f"{str(err).splitlines()[0]}; leave such files out with --skip-unreadable"
                    ) from None
                unreadable.append(path_text(path))
                continue
            paths.append(path_text(path))
        if batch:
            logits.append(model.logits(torch.stack(batch)))
    if not logits:
        raise PredictInputError(f"--images {path_text(folder)}: none of its {len(files)} image file(s) could be read")
    return Predictions(model.classes, torch.cat(logits), paths)


def predictions_csv(preds: Predictions, k: int, labels: Sequence[int] | None = None) -> str:
    """The CSV text of ``shiftlab predict``: path, predicted, probability, [label, correct,] top1..topK."""
    import csv
    import io

    k = min(k, len(preds.class_names))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = ["path", "predicted", "probability"] + (["label", "correct"] if labels is not None else [])
    writer.writerow(head + [c for i in range(1, k + 1) for c in (f"top{i}", f"top{i}_prob")])
    for i, (top, predicted) in enumerate(zip(preds.top_k(k), preds.classes)):
        row = [preds.paths[i] if preds.paths else "", predicted, f"{top[0][1]:.6f}"]
        if labels is not None:
            row += [preds.class_names[labels[i]], int(preds.class_names[labels[i]] == predicted)]
        writer.writerow(row + [v for name, p in top for v in (name, f"{p:.6f}")])
    return buffer.getvalue()
