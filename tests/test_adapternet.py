"""AdapterNet (Hazan et al. 2018): identity initialisation, the frozen classifier, recovery on a simulated
camera, adapter.pt and ``shiftlab adapt-images``; the fine-tuning baselines' early stopping; and
``data.target_train_limit`` for the curve over the number of labelled target images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab.cli import main
from shiftlab.config import build_config
from shiftlab.data.pair import build_domain_pair
from shiftlab.data.splits import keys_of
from shiftlab.engine.callbacks import EarlyStopping
from shiftlab.engine.loop import Trainer
from shiftlab.errors import ConfigError
from shiftlab.methods import method_params
from shiftlab.methods.adapternet import read_adapter_file
from shiftlab.nn.adapters import AdapterNet, load_adapter

CAMERA = "mnist_m@power(0.2,0.3,0.4)"


# --- the adapter alone -------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5, 9])
@pytest.mark.parametrize("kernel_size, hidden", [(1, 3), (3, 3), (1, 8), (5, 6)])
def test_identity_initialisation_is_exact(depth, kernel_size, hidden):
    torch.manual_seed(depth)
    x = torch.rand(3, 3, 17, 23)
    x[0, :, 0, 0], x[0, :, 1, 1] = 0.0, 1.0  # the ends of [0, 1] included
    adapter = AdapterNet(depth=depth, kernel_size=kernel_size, hidden_channels=hidden)
    assert torch.equal(adapter(x), x)  # bit for bit, with autograd on as in training
    with torch.no_grad():
        assert torch.equal(adapter(x), x)


def test_default_architecture_is_the_papers():
    adapter = AdapterNet()
    convs = [m for m in adapter.layers if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(c.kernel_size == (1, 1) and c.out_channels == 3 for c in convs)
    assert sum(isinstance(m, torch.nn.ReLU) for m in adapter.layers) == 4  # between layers, none after the last
    assert sum(p.numel() for p in adapter.parameters()) == 5 * (9 + 3)


def test_pointwise_layers_compute_the_1x1_convolution_and_its_gradients():
    """The 1x1 layers are a channel product (fast on CPU), but the function and the gradients are the
    convolution's; the state-dict keys are those of nn.Conv2d, so adapter.pt files load either way."""
    torch.manual_seed(0)
    adapter = AdapterNet(init="kaiming", hidden_channels=8)
    x = torch.rand(4, 3, 9, 11, requires_grad=True)

    def reference(x):
        for layer in adapter.layers:
            x = (
                torch.nn.functional.conv2d(x, layer.weight, layer.bias)
                if isinstance(layer, torch.nn.Conv2d)
                else layer(x)
            )
        return x

    fast, slow = adapter(x), reference(x)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    first = adapter.layers[0]
    grads = torch.autograd.grad(fast.square().sum(), (x, first.weight, first.bias))
    expected = torch.autograd.grad(slow.square().sum(), (x, first.weight, first.bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert list(adapter.state_dict())[:2] == ["layers.0.weight", "layers.0.bias"]
    assert adapter.layers[0].weight.shape == (8, 3, 1, 1)


def test_random_initialisations_are_not_the_identity_and_bad_shapes_are_refused():
    x = torch.rand(2, 3, 8, 8)
    for init in ("kaiming", "xavier"):
        torch.manual_seed(0)
        assert not torch.equal(AdapterNet(init=init)(x), x)
    with pytest.raises(ValueError, match="hidden_channels >= channels"):
        AdapterNet(hidden_channels=2)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        AdapterNet(kernel_size=2)
    with pytest.raises(ConfigError, match="method.kernel_size: .*must be odd"):
        method_params("adapternet", {"kernel_size": 4})
    with pytest.raises(ConfigError, match="method.init: .*'identity', 'kaiming' or 'xavier'"):
        method_params("adapternet", {"init": "he"})


# --- training through a frozen classifier, on real data ----------------------------------------------


def _common(data_root, out: Path, name: str) -> list[str]:
    return [
        f"--data.root={data_root}",
        "--data.dataset=digits",
        "--data.source=mnist_m",
        "--data.image_size=28",
        "--model.name=small_cnn",
        "--data.batch_size=32",
        "--train.progress=false",
        "--train.validators=[]",
        f"--experiment.output_dir={out}",
        f"--experiment.name={name}",
        "--optim.name=adam",
        "--optim.weight_decay=0",
    ]


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """A small classifier trained on MNIST-M (1,000 images, 3 epochs; about 85% clean accuracy), then
    AdapterNet on the power camera through it (2 epochs), and the classifier's pure inference on the camera."""
    out = tmp_path_factory.mktemp("adapternet")
    trained = {}
    cfg = build_config(
        [],
        _common(data_root, out, "classifier")
        + ["--data.target=mnist_m", "--data.limit=1000", "--train.epochs=3", "--optim.lr=0.002"],
    )
    trained["classifier"] = Trainer(cfg).fit()
    weights = out / "classifier" / "checkpoints" / "best.pt"
    camera = [f"--data.target={CAMERA}", "--data.limit=600", f"--model.weights={weights}"]
    cfg = build_config([], _common(data_root, out, "inference") + camera + ["--train.epochs=0"])
    trained["inference"] = Trainer(cfg).fit()
    cfg = build_config(
        [],
        _common(data_root, out, "adapter")
        + camera
        + ["--method.name=adapternet", "--train.epochs=2", "--optim.lr=0.01"],
    )
    trained["adapter"] = Trainer(cfg).fit()
    return out, trained


@pytest.mark.slow
def test_classifier_is_bit_identical_after_training_the_adapter(runs):
    out, _ = runs
    before = torch.load(out / "classifier" / "checkpoints" / "best.pt", weights_only=True)["model"]
    after = torch.load(out / "adapter" / "checkpoints" / "last.pt", weights_only=True)["model"]
    classifier = {k: v for k, v in before.items() if k.startswith("backbone.")}
    assert any("running_mean" in k for k in classifier) and any("num_batches_tracked" in k for k in classifier)
    for key, value in classifier.items():  # parameters and BatchNorm statistics alike
        assert torch.equal(after[key], value), key
    assert any(k.startswith("adapter.") for k in after)
    # and the adapter did learn: it is no longer the identity
    identity = AdapterNet().state_dict()
    assert any(not torch.equal(after[f"adapter.{k}"], v) for k, v in identity.items())


@pytest.mark.slow
def test_adapter_recovers_accuracy_on_the_power_camera(runs):
    _, trained = runs
    clean = trained["classifier"]["target_acc"]
    inference = trained["inference"]["target_acc"]
    adapted = trained["adapter"]
    # the same 600 camera test images for both (the official test set, evenly spaced)
    assert (
        adapted["splits"]["target_eval"]["fingerprint"] == trained["inference"]["splits"]["target_eval"]["fingerprint"]
    )
    assert adapted["selection"] == "target_val" and adapted["reads_target_labels"]
    assert clean > 0.75 and inference < clean - 0.15  # the camera hurts the fixed classifier
    assert adapted["target_acc"] > inference + 0.15, (inference, adapted["target_acc"], clean)


@pytest.mark.slow
def test_adapter_file_holds_the_selected_adapter_alone(runs):
    out, _ = runs
    state = read_adapter_file(out / "adapter" / "adapter.pt")
    assert state["arch"] == {"channels": 3, "depth": 5, "hidden_channels": 3, "kernel_size": 1}
    best = torch.load(out / "adapter" / "checkpoints" / "best.pt", weights_only=True)
    assert state["epoch"] == best["epoch"]
    for key, value in state["state_dict"].items():
        assert torch.equal(best["model"][f"adapter.{key}"], value)
    adapter = load_adapter(state)
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert adapter(x).shape == x.shape


@pytest.mark.slow
def test_adapt_images_writes_images_and_a_grid(runs, data_root, tmp_path, capsys):
    out, _ = runs
    code = main(
        [
            "adapt-images",
            "--adapter",
            str(out / "adapter"),
            "--images",
            CAMERA,
            "--out",
            str(tmp_path / "domain"),
            "--limit",
            "5",
            "--root",
            str(data_root),
        ]
    )
    assert code == 0, capsys.readouterr().err
    adapted = sorted((tmp_path / "domain" / "adapted").glob("*.png"))
    assert len(adapted) == 5
    for sub in ("original", "camera"):
        assert len(list((tmp_path / "domain" / sub).glob("*.png"))) == 5
    first = Image.open(adapted[0])
    assert first.size == (32, 32) and first.mode == "RGB"  # MNIST-M's own resolution: no resizing
    grid = Image.open(tmp_path / "domain" / "grid.png")
    assert grid.height == 3 * (96 + 2) + 2  # three rows: original / camera / adapted

    # a folder of images: its files, adapted under the same names
    folder = tmp_path / "mine" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(folder / f"img{i}.png")
    assert (
        main(
            [
                "adapt-images",
                "--adapter",
                str(out / "adapter" / "adapter.pt"),
                "--images",
                str(tmp_path / "mine"),
                "--out",
                str(tmp_path / "folder_out"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "folder_out" / "adapted" / "sub").iterdir()) == [
        "img0.png",
        "img1.png",
        "img2.png",
    ]
    assert Image.open(tmp_path / "folder_out" / "grid.png").height == 2 * (96 + 2) + 2

    # errors name the bad path or value
    capsys.readouterr()
    assert main(["adapt-images", "--adapter", str(tmp_path / "nope"), "--images", CAMERA, "--out", str(tmp_path)]) == 2
    assert f"--adapter {tmp_path / 'nope'}: no such run folder" in capsys.readouterr().err
    assert (
        main(
            [
                "adapt-images",
                "--adapter",
                str(out / "adapter"),
                "--images",
                str(tmp_path / "missing" / "x"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "missing/x: no such folder" in capsys.readouterr().err
    assert (
        main(
            [
                "adapt-images",
                "--adapter",
                str(out / "adapter"),
                "--images",
                "mnist_m@colour_rotatoin(3)",
                "--out",
                str(tmp_path),
                "--root",
                str(data_root),
            ]
        )
        == 2
    )
    assert "unknown shift 'colour_rotatoin'" in capsys.readouterr().err
    assert main(["adapt-images", "--adapter", str(out / "classifier"), "--images", CAMERA, "--out", str(tmp_path)]) == 2
    assert "holds no adapter (method 'source_only')" in capsys.readouterr().err


# --- fine-tuning baselines: from a checkpoint, early-stopped on the target's validation part ----------


@pytest.mark.slow
def test_finetune_from_checkpoint_with_early_stopping_on_target_val(runs, data_root):
    out, _ = runs
    weights = out / "classifier" / "checkpoints" / "best.pt"
    cfg = build_config(
        [],
        _common(data_root, out, "finetune")
        + [
            f"--data.target={CAMERA}",
            "--data.limit=200",
            f"--model.weights={weights}",
            "--method.name=finetune",
            "--method.layers=1",
            "--train.epochs=2",
            "--train.early_stopping_patience=1",
        ],
    )
    trainer = Trainer(cfg)
    stoppers = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    assert len(stoppers) == 1 and stoppers[0].monitor == "target_val_acc" and stoppers[0].patience == 1
    summary = trainer.fit()
    assert summary["selection"] == "target_val" and "target_val_acc" in summary["selections"]["target_val"]
    with pytest.raises(ConfigError, match="train.selection=last has none"):
        Trainer(
            build_config(
                [],
                _common(data_root, out, "ft_last")
                + [
                    f"--data.target={CAMERA}",
                    "--data.limit=50",
                    f"--model.weights={weights}",
                    "--method.name=finetune",
                    "--train.selection=last",
                    "--train.early_stopping_patience=2",
                ],
            )
        )


def test_early_stopping_replays_the_history_on_resume():
    class Stub:
        should_stop = False
        history = [{"target_val_acc": 0.5}, {"target_val_acc": 0.4}, {"epoch": 3}]

    stub, stopper = Stub(), EarlyStopping(monitor="target_val_acc", patience=2)
    stopper.on_fit_start(stub)
    assert (stopper.best, stopper.waited) == (0.5, 1)
    stopper.on_evaluation(stub, {"target_val_acc": 0.45})
    assert stub.should_stop


# --- data.target_train_limit -------------------------------------------------------------------------


def test_target_train_limit_applies_to_the_labelled_target_training_part_only(data_root):
    from shiftlab.data.registry import get_dataset

    small = build_domain_pair(
        "digits", data_root, "mnist_m", CAMERA, image_size=28, target_labels=True, target_train_limit=50
    )
    assert len(small.target_train) == 50 and len(small.target_adapt_images) == 50
    # deterministic, whatever the seed: evenly spaced over the labelled training part (MNIST-M's 90% train)
    train = get_dataset("digits", data_root).dataset(data_root, "mnist_m", "train")
    full_keys = keys_of(train)
    assert small.splits["target_train"]["size_before_limit"] == len(full_keys)
    assert keys_of(small.target_train) == [
        full_keys[i] for i in np.linspace(0, len(full_keys) - 1, 50).round().astype(int)
    ]
    labels = [y for _, y in small.target_train]
    assert len(set(labels)) >= 8  # evenly spaced over the split: most classes present
    for part in ("target_val", "target_eval", "source_train", "source_val"):  # untouched
        assert "size_before_limit" not in small.splits[part], part
    assert small.splits["target_eval"]["size"] == 9001
    unlabelled = build_domain_pair(
        "digits", data_root, "mnist_m", CAMERA, image_size=28, limit=100, target_train_limit=50
    )
    assert len(unlabelled.target_train) == 100  # read by labelled methods only
    cfg = build_config([], ["--data.target_train_limit=200"])
    assert cfg.data.target_train_limit == 200
    with pytest.raises(ConfigError, match="data.target_train_limit"):
        build_config([], ["--data.target_train_limit=0"])


# --- the study's sweep files -------------------------------------------------------------------------


def test_sweep_files_expand_with_a_method_section_per_grid_value():
    from shiftlab.sweep.spec import expand, load_sweep

    repo = Path(__file__).resolve().parents[1]
    trials = expand(load_sweep(repo / "sweeps" / "adapternet_digits.yaml"))
    assert len(trials) == 4 * 3 * 3
    by_name = {t.name: t for t in trials}
    name = "method.name=finetune,method.layers=2,data.target=mnist_m@power(0.2,0.3,0.4),experiment.seed=1"
    assert by_name[name].config["method"] == {"name": "finetune", "layers": 2, "count": "layer"}  # parametrised layers
    assert by_name[name].config["train"]["early_stopping_patience"] == 5
    assert str(by_name[name].config["model"]["weights"]).endswith(
        "runs/adapternet/digits/classifier/checkpoints/best.pt"
    )
    for other in ("inference", "samples", "angles", "init"):
        assert expand(load_sweep(repo / "sweeps" / f"adapternet_digits_{other}.yaml"))
    assert len(expand(load_sweep(repo / "sweeps" / "adapternet_pacs.yaml"))) == 36
