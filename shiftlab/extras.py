"""Optional dependencies, each behind a pip extra: the core install (``pip install shiftlab``) trains,
evaluates and lists datasets without them, and a command that needs one says which extra to install.

========  ==================================  ==========================================
extra     packages                            needed by
========  ==================================  ==========================================
sweep     ray[tune], optuna                   ``shiftlab sweep`` (optuna: ``search: optuna``)
report    matplotlib                          ``shiftlab report``'s plots (not ``--no-plots``)
onnx      onnx, onnxruntime                   ONNX export
docs      mkdocs-material, mkdocstrings       ``make docs``
timm      timm                                ``--model.name=timm:<name>``
all       all of the above
========  ==================================  ==========================================

Nothing in the core import path (``import shiftlab``, ``shiftlab train``, ``shiftlab datasets``) imports
these at module import time (tests/test_packaging.py checks it).
"""

from __future__ import annotations

import importlib

from .errors import MissingExtraError

EXTRAS = {
    "sweep": ("ray", "optuna"),
    "report": ("matplotlib",),
    "onnx": ("onnx", "onnxruntime"),
    "docs": ("mkdocs", "mkdocstrings"),
    "timm": ("timm",),
}


def require(module: str, what: str, extra: str, hint: str = "") -> None:
    """Import ``module`` or raise :class:`~shiftlab.errors.MissingExtraError`, one line:
    ``<what>: pip install "shiftlab[<extra>]"`` (e.g. ``shiftlab sweep needs Ray Tune``), plus ``hint``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {', '.join(EXTRAS)}")
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f'{what}: pip install "shiftlab[{extra}]"{hint} (cannot import {module}: {err})'
        ) from None
