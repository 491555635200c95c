"""AdaBN re-estimates BatchNorm statistics on target data and changes nothing else."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from shiftlab.data.pair import Transformed, build_domain_pair
from shiftlab.methods import build_method
from shiftlab.models import build_backbone
from shiftlab.nn import batchnorm_state, reestimate_batchnorm
from shiftlab.nn.batchnorm import eval_mode


def _demo_target_images(limit=None):
    """The demo target's evaluation images without their labels."""
    target = build_domain_pair("demo", None, "digits", "digits_photo", limit=limit).target_eval
    return Transformed(target.base, target.transform, with_labels=False)


def _trained_like_model():
    torch.manual_seed(0)
    model = build_backbone("small_cnn", 10)
    model.train()
    with torch.no_grad():  # give the BN layers non-default source statistics
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32) * 2 + 1)
    return model


def test_only_batchnorm_statistics_change():
    model = _trained_like_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = reestimate_batchnorm(model, DataLoader(_demo_target_images(), batch_size=100))
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stats) == 9  # three BN layers in small_cnn
    for k in before:
        if k in stats:
            assert not torch.equal(before[k], after[k]), f"{k} was not re-estimated"
        else:
            assert torch.equal(before[k], after[k]), f"{k} changed but is not a BN statistic"
    assert seen == len(_demo_target_images())
    assert model.training  # the mode is restored


def test_statistics_are_exactly_those_of_the_target_images():
    model = _trained_like_model()
    images = torch.stack([_demo_target_images()[i] for i in range(200)])
    reestimate_batchnorm(model, [images])
    with torch.no_grad():
        act = model.features.conv1(model.normalize(images))
    torch.testing.assert_close(model.features.bn1.running_mean, act.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        model.features.bn1.running_var, act.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5
    )


def test_adabn_method_restores_source_statistics_after_target_evaluation():
    method = build_method("adabn", _trained_like_model(), {})
    source_stats = batchnorm_state(method.backbone)
    loader = DataLoader(_demo_target_images(limit=128), batch_size=64)
    method.before_evaluation("target", loader)
    adapted = batchnorm_state(method.backbone)
    assert not torch.equal(adapted["features.bn1.running_mean"], source_stats["features.bn1.running_mean"])
    method.after_evaluation()
    for k, v in batchnorm_state(method.backbone).items():
        assert torch.equal(v, source_stats[k])
    method.before_evaluation("source", None)  # source evaluation keeps the source statistics
    for k, v in batchnorm_state(method.backbone).items():
        assert torch.equal(v, source_stats[k])
    method.after_evaluation()


def test_eval_mode_restores_the_mode_it_found_even_after_an_error():
    model = _trained_like_model()
    with eval_mode(model):
        assert not model.training and not model.features.bn1.training
    assert model.training and model.features.bn1.training
    model.eval()
    try:
        with eval_mode(model):
            model.train()  # whatever happens inside, the mode found is the mode left
            raise KeyError("inside")
    except KeyError:
        pass
    assert not model.training and not model.features.bn1.training
