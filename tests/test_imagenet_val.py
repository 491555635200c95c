"""The ImageNet validation set in its official layout with AdapterNet's ID split (seeds/001, section 4: IDs
1-40,000 train, 40,001-45,000 validation, 45,001-50,000 test), on a tiny synthetic copy of the layout: a
devkit ``meta.mat`` (1,000 leaf synsets in a shuffled ILSVRC2012_ID order, plus a non-leaf), the 50,000-line
ground truth, and a handful of JPEG files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from shiftlab.config import build_config
from shiftlab.data import imagenet
from shiftlab.data.pair import build_domain_pair
from shiftlab.data.registry import get_dataset
from shiftlab.data.splits import keys_of
from shiftlab.errors import DataError

IDS = [1, 2, 40_000, 40_001, 45_000, 45_001, 50_000]


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "ImageNet"
    devkit = base / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    wnids = [f"n{10_000_000 + 7 * k:08d}" for k in range(1000)]  # sorted order = class index
    ids = rng.permutation(1000) + 1  # the devkit's ID of class k
    rows = [(int(ids[k]), wnids[k], f"w{k}", "g", 0) for k in range(1000)] + [(1001, "n00000001", "root", "g", 5)]
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
    scipy.io.savemat(str(devkit / "meta.mat"), {"synsets": np.array(rows, dtype=dtype)})
    classes = rng.integers(0, 1000, size=50_000)  # class index of each image ID
    for n, i in enumerate(IDS):  # the few present images: classes 5, 6, 7, so the train IDs have every one
        classes[i - 1] = 5 + n % 3
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[c]}\n" for c in classes))
    (base / "ILSVRC2012_img_val").mkdir()
    for i in IDS:
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
            base / "ILSVRC2012_img_val" / f"ILSVRC2012_val_{i:08d}.JPEG"
        )
    (base / "ILSVRC2012_img_val" / "README.txt").write_text("not an image")
    imagenet._labels.cache_clear()
    yield tmp_path, classes
    imagenet._labels.cache_clear()


def test_id_split_and_labels(root):
    path, classes = root
    spec = get_dataset("imagenet_val")
    assert spec.domains == ("imagenet",) and len(spec.classes) == 1000 and spec.classes[0] == "000 tench"
    split = {s: spec.dataset(path, "imagenet", s) for s in ("train", "val", "test")}
    assert [ds.ids for ds in split.values()] == [[1, 2, 40_000], [40_001, 45_000], [45_001, 50_000]]
    assert keys_of(split["train"])[0] == "ILSVRC2012_img_val/ILSVRC2012_val_00000001.JPEG"
    for ds in split.values():
        assert ds.targets == [int(classes[i - 1]) for i in ds.ids]  # devkit ID -> sorted-WNID index
    image, label = split["val"][1]
    assert image.mode == "RGB" and image.size == (50, 40) and label == classes[45_000 - 1]
    report = imagenet.check(path, "imagenet")
    assert report.present and report.images == 7 and not report.problems and report.notes


def test_camera_pair_for_labelled_methods(root):
    path, _ = root
    pair = build_domain_pair(
        "imagenet_val", path, "imagenet", "imagenet@power(0.2,0.3,0.4)", target_labels=True, image_size=32
    )
    ids = lambda ds: sorted(int(k[-13:-5]) for k in keys_of(ds))  # noqa: E731
    assert ids(pair.target_train) == [1, 2, 40_000] and ids(pair.target_val) == [40_001, 45_000]
    assert ids(pair.target_eval) == [45_001, 50_000] and pair.target_eval_split == "test"
    x, _ = pair.target_eval[0]
    assert x.shape == (3, 32, 32)


def test_missing_files_and_bad_ground_truth(root, tmp_path_factory):
    path, _ = root
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match="meta.mat"):
        imagenet.load(empty, "imagenet", "train")
    gt = path / "ImageNet" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n" * 10)
    imagenet._labels.cache_clear()
    with pytest.raises(DataError, match="10 labels, expected 50000"):
        imagenet.load(path, "imagenet", "test")


def test_vgg16_config_validates():
    cfg = build_config(["configs/adapternet/imagenet_vgg16.yaml"], ["--model.weights=/tmp/vgg16.pth"])
    assert (cfg.data.dataset, cfg.model.name, cfg.model.head_layers) == ("imagenet_val", "vgg16", 3)
    assert cfg.method.name == "adapternet" and cfg.method.depth == 5
