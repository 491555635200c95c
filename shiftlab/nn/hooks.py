"""Forward hooks on modules chosen by name, registered together and taken off together.

Activation shaping (:mod:`shiftlab.nn.shaping`), activation taps and Gaussian matching
(:mod:`shiftlab.nn.matching`) all read or replace a module's input or output during the forward pass
without touching the model's code; :class:`ForwardHooks` holds their handles, and :func:`named_module`
resolves a module name with an error that lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..errors import ConfigError
from ..utils import unknown_choice_error

WHERE = ("out", "in")  # a module's output, or its first input

# fn(module, activation) -> a tensor that replaces the activation, or None to leave it as it is
ActivationHook = Callable[[nn.Module, object], "Tensor | None"]


def named_module(root: nn.Module, name: str, what: str = "module name") -> nn.Module:
    """``root``'s submodule ``name`` (as in ``root.named_modules()``); an unknown name is a :class:`ConfigError`
    naming ``what`` and listing the valid names."""
    modules = dict(root.named_modules())
    if not name or name not in modules:  # the root itself has no name to choose it by
        raise ConfigError(unknown_choice_error(what, name, [n for n in modules if n]))
    return modules[name]


class ForwardHooks:
    """The handles of forward hooks; :meth:`remove` (or leaving a ``with`` block) takes them all off, after
    which the model computes what it did before."""

    def __init__(self) -> None:
        self._handles: list = []

    def __len__(self) -> int:
        return len(self._handles)

    def before(self, module: nn.Module, fn: Callable[[], None]) -> None:
        """Call ``fn()`` at the start of every forward of ``module``."""
        self._handles.append(module.register_forward_pre_hook(lambda *_: fn()))

    def activation(self, module: nn.Module, fn: ActivationHook, where: str = "out") -> None:
        """Call ``fn(module, a)`` with ``module``'s output (``where="out"``) or first input (``"in"``) at every
        call of it; a tensor it returns replaces that activation."""
        if where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, got {where!r}")
        if where == "out":
            self._handles.append(module.register_forward_hook(lambda m, inputs, output: fn(m, output)))
        else:
            self._handles.append(module.register_forward_pre_hook(_input_hook(fn)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ForwardHooks:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _input_hook(fn: ActivationHook):
    """A forward pre-hook that gives ``fn`` the first input and puts what it returns (if not None) in its place."""

    def hook(module, inputs):
        out = fn(module, inputs[0] if inputs else None)
        return None if out is None else (out, *inputs[1:])

    return hook
