"""timm classifiers as backbones (``model.name=timm:<name>``): built from scratch, trained through the loop,
loaded from a local weights file (timm's own format or a shiftlab checkpoint), never from timm's hub."""

from __future__ import annotations

import pytest
import torch

from shiftlab.config import build_config
from shiftlab.errors import ConfigError, ModelError, WeightsError
from shiftlab.models import build_backbone

timm = pytest.importorskip("timm")


def test_a_timm_model_is_split_into_features_and_shiftlabs_head():
    backbone = build_backbone("timm:resnet18d", 7)
    assert backbone.feature_dim == 512 and backbone.head.out_features == 7
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert "layer4.0.conv2" in dict(backbone.features.named_modules())  # timm's own layer names


def test_timm_weights_load_from_a_local_file_except_the_classifier(tmp_path):
    reference = timm.create_model("resnet18d", pretrained=False, num_classes=1000)
    torch.nn.init.constant_(reference.conv1[0].weight, 0.25)
    torch.save(reference.state_dict(), tmp_path / "timm.pt")
    backbone = build_backbone("timm:resnet18d", 4, weights=tmp_path / "timm.pt")
    assert torch.equal(backbone.features.conv1[0].weight, reference.conv1[0].weight)
    assert backbone.head.out_features == 4  # the 1000-class classifier of the file is left out
    # a file of another architecture is one line naming the file
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="other.pt.*does not fit timm's resnet18d"):
        build_backbone("timm:resnet18d", 4, weights=tmp_path / "other.pt")
    # a shiftlab checkpoint of the same backbone loads whole, head included
    torch.save({"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, tmp_path / "run.pt")
    again = build_backbone("timm:resnet18d", 4, weights=tmp_path / "run.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), backbone.state_dict().values()))


def test_hub_weights_are_refused_and_unknown_names_named():
    with pytest.raises(WeightsError, match="does not download timm's weights"):
        build_backbone("timm:resnet18d", 4, pretrained="imagenet")
    with pytest.raises(ModelError, match="unknown timm model 'resnet18dd'.*resnet18d"):
        build_backbone("timm:resnet18dd", 4)
    with pytest.raises(ConfigError, match="resnet18dd"):
        build_config([], ["--model.name=timm:resnet18dd"])


@pytest.mark.slow
def test_a_timm_backbone_trains_through_the_loop(tmp_path):
    from shiftlab.engine.loop import Trainer

    cfg = build_config(
        ["demo"],
        [
            f"--experiment.output_dir={tmp_path}",
            "--model.name=timm:resnet10t",
            "--train.epochs=1",
            "--train.steps_per_epoch=2",
            "--data.limit=64",
            "--data.batch_size=16",
            "--train.progress=false",
            "--train.validators=[]",
        ],
    )
    summary = Trainer(cfg).fit()
    assert summary["steps"] == 2 and summary["config"]["model"]["name"] == "timm:resnet10t"
