"""``shiftlab export``: a run's model as one self-contained graph (ONNX or TorchScript), from images to logits.

Built on :func:`shiftlab.inference.load_run` (DESIGN.md, "Using a trained model"), so the graph computes what
the run evaluated: the input conversion (uint8 0..255, or float in [0, 1]) to the model's [0, 1] images, the
normalisation (the model's first module), and whatever the method adds at inference, traced as it runs:
AdapterNet's adapter before the classifier, AdaBN's target statistics in the BatchNorm running statistics,
Gaussian matching's per-channel affine maps, activation shaping's deterministic hooks. The batch dimension is
dynamic; the input is ``(N, 3, S, S)`` at the run's input size ``S`` (resizing stays outside: PIL's, as
:class:`shiftlab.inference.RunModel` does it).

Metadata (ONNX ``metadata_props``; TorchScript ``_extra_files["shiftlab.json"]``, read both with
:func:`read_metadata`): ``classes`` (JSON list, output order), ``input_size``, ``input`` (uint8 / float),
``input_layout`` NCHW RGB, ``config_sha256`` (:func:`shiftlab.inference.config_hash`), ``method``, ``model``,
``run``, ``checkpoint``, ``epoch``, ``shiftlab_version``.

Every export is checked before it is written: the exported graph must give the model's logits (within 1e-4,
float32) on a batch of a size other than the one traced. A model whose predictions are random (activation
shaping with random masks at evaluation) or whose inference lives in Python state the trace cannot hold is
refused with one line saying why.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .data.base import path_text
from .errors import ExportError
from .extras import require
from .inference import RunModel, load_run
from .utils import atomic_path

FORMATS = ("onnx", "torchscript")
INPUTS = ("uint8", "float")
TOLERANCE = 1e-4  # logits, float32: the exported graph against the model itself
OPSET = 17
ONNX_HINT = 'pip install "shiftlab[onnx]"'
METADATA_FILE = "shiftlab.json"  # TorchScript's _extra_files entry


class GraphModel(nn.Module):
    """Images (uint8 0..255 or float [0, 1], NCHW RGB) -> logits, through the method's ``predict``."""

    def __init__(self, method: nn.Module, input_kind: str):
        super().__init__()
        self.method, self.input_kind = method, input_kind

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.input_kind == "uint8":
            x = x * (1 / 255)  # float32(v) * float32(1/255): bit for bit the data path's conversion
        return self.method.predict(x)


def metadata(model: RunModel, input_kind: str) -> dict[str, str]:
    cfg = model.config
    return {
        "classes": json.dumps(model.classes),
        "input_size": str(model.image_size),
        "input": input_kind,
        "input_layout": "NCHW RGB",
        "config_sha256": model.config_hash,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "run": path_text(model.run_dir),
        "checkpoint": model.checkpoint.name,
        "epoch": str(model.epoch),
        "shiftlab_version": __version__,
    }


def export_run(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str,
    checkpoint: str = "best",
    input: str = "uint8",
    data_root: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Export run folder ``run``'s model (``checkpoint`` best/last) to ``out``; returns the file's metadata."""
    check_choices(format, input)
    if format == "onnx":
        require_onnx()
    model = load_run(run, checkpoint, device="cpu", data_root=data_root)
    return export_model(model, out, format=format, input=input)


def check_choices(format: str, input_kind: str) -> None:
    if format not in FORMATS:
        raise ExportError(f"--format {format}: valid are {', '.join(FORMATS)}")
    if input_kind not in INPUTS:
        raise ExportError(f"--input {input_kind}: valid are {', '.join(INPUTS)}")


def require_onnx():
    for module in ("onnx", "onnxruntime"):
        require(module, "shiftlab export --format onnx needs onnx and onnxruntime", "onnx")


def export_model(model: RunModel, out: str | os.PathLike, *, format: str, input: str = "uint8") -> dict[str, str]:
    """Trace ``model`` (moved to the CPU) into ``out`` as ``format``, check it against the model, write it atomically."""
    check_choices(format, input)
    model.method.to("cpu").eval()
    model.device = torch.device("cpu")
    graph = GraphModel(model.method, input).eval()
    s = model.image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, s, s), dtype=torch.uint8, generator=generator)
    check = torch.randint(0, 256, (3, 3, s, s), dtype=torch.uint8, generator=generator)
    refuse_random(model, check)
    if input == "float":
        example, check = example.float() / 255, check.float() / 255
    meta = metadata(model, input)
    out = Path(out)
    with atomic_path(out) as tmp, _quiet(), torch.no_grad():
        if format == "onnx":
            with explicit_adaptive_pooling(graph):
                _onnx(graph, example, tmp, meta)
            run = _onnx_runner(tmp)
        else:
            traced = _trace(graph, example, model)
            torch.jit.save(traced, str(tmp), _extra_files={METADATA_FILE: json.dumps(meta)})
            run = _torchscript_runner(tmp)
        _verify(model, graph, run, check, format)
    return meta


def refuse_random(model: RunModel, x: torch.Tensor) -> None:
    """A model that predicts differently on two passes over the same images cannot become a fixed graph."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        first, second = (model.logits(x.float() * (1 / 255)) for _ in range(2))
    if not torch.equal(first, second):
        cfg = model.config
        why = (
            " (activation shaping with method.maps=random and method.at_eval=true draws new masks at every prediction)"
            if cfg.method.name == "activation_shaping"
            else ""
        )
        raise ExportError(
            f"method '{cfg.method.name}' of {path_text(model.run_dir)} predicts differently on two "
            f"passes over the same images{why}: an exported graph could not reproduce its predictions; "
            f"predict with shiftlab predict instead"
        )


def _trace(graph: nn.Module, example: torch.Tensor, model: RunModel):
    try:
        return torch.jit.trace(graph, (example,), check_trace=False)
    except Exception as err:  # noqa: BLE001 - a trace fails in many ways; the method is named, the cause kept
        raise ExportError(
            f"method '{model.config.method.name}' cannot be traced into a graph: {type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}"
        ) from err


def _onnx(graph: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    import onnx

    buffer = io.BytesIO()
    try:
        # the TorchScript-based exporter: it works offline with onnx alone (the dynamo exporter needs onnxscript)
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
        )
    except Exception as err:  # noqa: BLE001
        raise ExportError(
            f"method '{meta['method']}' cannot be exported to ONNX: {type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}"
        ) from err
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"shiftlab {meta['method']} / {meta['model']}: images -> logits over {meta['classes']}"
    onnx.save(proto, str(path))


@contextlib.contextmanager
def explicit_adaptive_pooling(root: nn.Module):
    """Adaptive 2-D pooling computed window by window while exporting to ONNX.

    The TorchScript-based ONNX exporter refuses adaptive pooling whose output size does not divide the input
    size (SmallCNN's and the DANN digits network's 10 -> 4 max pooling at 32 px). The input size of an exported
    graph is fixed, so the windows are known: output cell i covers ``[floor(i * n / m), ceil((i + 1) * n / m))``,
    PyTorch's definition of adaptive pooling. The module's ``forward`` is replaced on the instance only, so
    hooks on it (activation shaping, Gaussian matching) keep working, and put back afterwards.
    """
    patched = [
        m
        for m in root.modules()
        if isinstance(m, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)) and not getattr(m, "return_indices", False)
    ]
    for m in patched:
        m.forward = _windowed(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _windowed(module: nn.Module):
    size = module.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    reduce = (lambda t: t.amax((-2, -1))) if isinstance(module, nn.AdaptiveMaxPool2d) else (lambda t: t.mean((-2, -1)))

    def forward(x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = size[0] or h, size[1] or w
        rows = [((i * h) // oh, -(-((i + 1) * h) // oh)) for i in range(oh)]
        cols = [((j * w) // ow, -(-((j + 1) * w) // ow)) for j in range(ow)]
        return torch.stack([torch.stack([reduce(x[..., r0:r1, c0:c1]) for c0, c1 in cols], -1) for r0, r1 in rows], -2)

    return forward


def _onnx_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _torchscript_runner(path: Path):
    module = torch.jit.load(str(path), map_location="cpu")
    return lambda x: module(x)


def _verify(model: RunModel, graph: nn.Module, run, x: torch.Tensor, format: str) -> None:
    expected = graph(x).float()
    got = run(x).float()
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ExportError(
            f"the {format} graph of method '{model.config.method.name}' disagrees with the model "
            f"(largest logit difference {diff:.3g} on a batch of {len(x)}): its inference depends on "
            f"Python state or on the batch size, which a traced graph cannot hold; nothing was written"
        )


@contextlib.contextmanager
def _quiet():
    """The deprecation and tracer warnings of torch.jit / the TorchScript-based ONNX exporter say nothing a user
    can act on: the export is checked against the model instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The shiftlab metadata of an exported ``.onnx`` or TorchScript file (``classes`` decoded to a list)."""
    path = Path(path)
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
    except Exception:  # noqa: BLE001 - not ONNX (or onnx missing): try TorchScript
        extra = {METADATA_FILE: ""}
        with _quiet():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra[METADATA_FILE] or "{}")
    if "classes" in meta:
        meta["classes"] = json.loads(meta["classes"])
    return meta


# ------------------------------------------------------------------------------------------------ shiftlab export


def export_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="shiftlab export",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a trained run's model as one self-contained graph, from images to logits: the input "
        "conversion, the normalisation and what the method adds at inference (adapter, AdaBN "
        "statistics, Gaussian matching's affine maps) included; dynamic batch size. The file's metadata "
        "holds the class names, the input size and the run's config hash (shiftlab.export.read_metadata).",
        epilog="examples:\n"
        "  shiftlab export --run runs/demo/adabn --format onnx --out adabn.onnx\n"
        "  shiftlab export --run runs/demo/adabn --checkpoint last --format torchscript --out adabn.pt --input float\n\n"
        "The export is checked against the model (logits within 1e-4) before it is written; a method whose "
        "predictions are random or held in Python state is refused with the reason. ONNX needs "
        f"{ONNX_HINT}. Resize images to the run's input size (in the metadata) as PIL's bilinear "
        "Resize((S, S)) does before feeding them.",
    )
    p.add_argument("--run", required=True, metavar="RUN", help="the run folder (runs/<experiment.name>)")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="best: checkpoints/best.pt, the epoch the run's selection rule chose (default); last: checkpoints/last.pt",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="onnx (opset 17, the TorchScript-based exporter, metadata_props) or torchscript "
        "(torch.jit; metadata in the file's extra file shiftlab.json)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (its folder is created)")
    p.add_argument(
        "--input",
        default="uint8",
        choices=INPUTS,
        help="uint8: images 0..255, (N, 3, S, S) RGB (default); float: float32 images in [0, 1]",
    )
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="where the run's dataset is, for methods whose inference state is computed from the run's "
        "images (AdaBN, Gaussian matching; default: the run's data.root)",
    )
    return p


def export_command(argv: list[str]) -> int:
    """``shiftlab export`` (see :func:`export_parser`)."""
    args = export_parser().parse_args(argv)
    meta = export_run(
        args.run, args.out, format=args.format, checkpoint=args.checkpoint, input=args.input, data_root=args.data_root
    )
    s = meta["input_size"]
    print(
        f"wrote {args.out} ({args.format}): {meta['input']} images (N, 3, {s}, {s}) -> logits over "
        f"{len(json.loads(meta['classes']))} classes; method {meta['method']}, {meta['checkpoint']} (epoch "
        f"{meta['epoch']}), config sha256 {meta['config_sha256']}"
    )
    return 0
