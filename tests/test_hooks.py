"""ForwardHooks: the one place hooks are registered and removed; named_module: names resolved with the valid list."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shiftlab.errors import ConfigError
from shiftlab.nn.hooks import ForwardHooks, named_module


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_named_module_resolves_a_name():
    net = _net()
    assert named_module(net, "2") is net[2]


@pytest.mark.parametrize("name", ["3", ""])
def test_unknown_module_name_lists_the_valid_ones(name):
    with pytest.raises(ConfigError, match=r"unknown module name .*valid: 0, 1, 2"):
        named_module(_net(), name)


def test_output_hook_replaces_the_output():
    net, x = _net(), torch.randn(5, 4)
    with ForwardHooks() as hooks:
        hooks.activation(net[0], lambda module, a: torch.zeros_like(a))
        out = net(x)
    torch.testing.assert_close(out, net[2](torch.zeros(5, 3)))


def test_input_hook_replaces_the_first_input_and_sees_the_module():
    net, x, seen = _net(), torch.randn(5, 4), []
    expected = net[2](2 * net[1](net[0](x)))

    def double(module, a):
        seen.append(module)
        return 2 * a

    hooks = ForwardHooks()
    hooks.activation(net[2], double, where="in")
    torch.testing.assert_close(net(x), expected)
    assert seen == [net[2]]


def test_a_hook_that_returns_none_changes_nothing():
    net, x = _net(), torch.randn(5, 4)
    expected = net(x)
    hooks = ForwardHooks()
    kept = []
    hooks.activation(net[1], lambda module, a: kept.append(a), where="in")
    hooks.activation(net[1], lambda module, a: kept.append(a))
    torch.testing.assert_close(net(x), expected)
    assert len(kept) == 2


def test_before_runs_at_every_forward():
    net, calls = _net(), []
    hooks = ForwardHooks()
    hooks.before(net, lambda: calls.append(1))
    net(torch.randn(2, 4))
    net(torch.randn(2, 4))
    assert calls == [1, 1]


def test_remove_takes_every_hook_off():
    net, x = _net(), torch.randn(5, 4)
    expected = net(x)
    hooks = ForwardHooks()
    hooks.before(net, lambda: None)
    hooks.activation(net[0], lambda module, a: a + 1)
    hooks.activation(net[2], lambda module, a: a * 0, where="in")
    assert len(hooks) == 3
    hooks.remove()
    assert len(hooks) == 0
    torch.testing.assert_close(net(x), expected)
    assert not net._forward_hooks and not net._forward_pre_hooks and not net[0]._forward_hooks


def test_unknown_place_is_refused():
    with pytest.raises(ValueError, match="where"):
        ForwardHooks().activation(nn.ReLU(), lambda module, a: None, where="middle")
