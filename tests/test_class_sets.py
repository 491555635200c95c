"""Class sets and unreadable files as real datasets have them, on small image folders made in ``tmp_path``.

The dataset is the one of the report that motivated this: three domains, one of which lacks a class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shiftlab.data.pair import build_domain_pair
from shiftlab.data.splits import per_sample
from shiftlab.errors import DataError

CLASSES = ("ant", "bee", "cat")
PER_CLASS = 30


def make_domains(root: Path, layout: dict[str, tuple[str, ...]]) -> Path:
    """``root/Cams/<domain>/<class>/img_XX.jpg``: 16 px JPEGs, one colour per class."""
    for d, (domain, classes) in enumerate(layout.items()):
        for c, cls in enumerate(classes):
            folder = root / "Cams" / domain / cls
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                colour = (40 * c + 30, 10 * i, 60 * d)
                Image.new("RGB", (16, 16), colour).save(folder / f"img_{i:02d}.jpg", quality=90)
    return root


@pytest.fixture
def cams(tmp_path) -> Path:
    """Domains a and b have every class; c has no 'cat'."""
    return make_domains(tmp_path / "root", {"a": CLASSES, "b": CLASSES, "c": CLASSES[:2]})


def test_a_third_domain_lacking_a_class_does_not_block_a_pair(cams):
    pair = build_domain_pair("folder:Cams", cams, "a", "b", image_size=16)
    assert pair.classes == list(CLASSES)
    assert pair.missing_target_classes == []


@pytest.mark.parametrize("labelled", [False, True])
def test_target_lacking_a_source_class_trains_with_a_warning(cams, caplog, labelled):
    with caplog.at_level(logging.WARNING, logger="shiftlab.data.pair"):
        pair = build_domain_pair("folder:Cams", cams, "a", "c", image_size=16, target_labels=labelled)
    assert pair.missing_target_classes == ["cat"]
    assert pair.classes == list(CLASSES)  # the source's classes: the model keeps its three outputs
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "target 'c' has no images of 1 of the 3 classes of source 'a': cat" in warning
    assert "data.strict_classes=true" in warning
    labels = {y for _, y in (pair.target_eval[i] for i in range(len(pair.target_eval)))}
    assert labels <= {0, 1}  # ant, bee: the same indices as in the source
    paths = per_sample(pair.target_eval, "paths")
    assert all(CLASSES[y] == p.parent.name for (_, y), p in zip((pair.target_eval[i] for i in range(3)), paths))


def test_strict_classes_refuses_a_target_lacking_a_class(cams):
    with pytest.raises(DataError) as err:
        build_domain_pair("folder:Cams", cams, "a", "c", strict_classes=True)
    assert "target 'c' has no images of 1 of the 3 classes of source 'a': cat (data.strict_classes=true)" in str(
        err.value
    )


def test_target_class_that_the_source_lacks_is_an_error(cams):
    with pytest.raises(DataError) as err:
        build_domain_pair("folder:Cams", cams, "c", "a")
    assert "target 'a' has images of class(es) that source 'c' has none of: cat" in str(err.value)


def test_labels_follow_the_source_classes_when_it_lacks_one(tmp_path):
    """Both domains lack 'ant', the first class of the dataset: the pair has two classes, labels 0 and 1."""
    root = make_domains(tmp_path / "root", {"a": CLASSES, "b": CLASSES[1:], "c": CLASSES[1:]})
    pair = build_domain_pair("folder:Cams", root, "b", "c", image_size=16, target_labels=True)
    assert pair.classes == ["bee", "cat"] and pair.num_classes == 2
    for name in ("source_train", "source_val", "target_train", "target_val", "target_eval"):
        ds = getattr(pair, name)
        for i in range(len(ds)):
            _, y = ds[i]
            assert pair.classes[y] == per_sample(ds, "paths")[i].parent.name, name


# --- unreadable files ------------------------------------------------------------------------------


@pytest.fixture
def broken(cams) -> tuple[Path, list[Path]]:
    """Domain b with a garbage .jpg and a truncated one."""
    garbage = cams / "Cams" / "b" / "ant" / "img_03.jpg"
    garbage.write_bytes(b"\x00\xffnot a jpeg" * 20)
    truncated = cams / "Cams" / "b" / "cat" / "img_05.jpg"
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    big.save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:600])
    return cams, [garbage, truncated]


def test_unreadable_file_stops_with_its_name_by_default(broken):
    root, bad = broken
    pair = build_domain_pair("folder:Cams", root, "a", "b", image_size=16)
    assert pair.skipped_files == []
    index = per_sample(pair.target_eval, "paths").index(bad[0])
    with pytest.raises(DataError, match=f"cannot decode image {bad[0]}"):
        pair.target_eval[index]
    index = per_sample(pair.target_eval, "paths").index(bad[1])
    with pytest.raises(DataError, match=f"cannot decode image {bad[1]}: (?i:.*truncated)"):
        pair.target_eval[index]


@pytest.mark.parametrize("labelled", [False, True])
def test_skip_unreadable_leaves_them_out_and_lists_them(broken, caplog, labelled):
    root, bad = broken
    with caplog.at_level(logging.WARNING, logger="shiftlab.data.pair"):
        pair = build_domain_pair(
            "folder:Cams", root, "a", "b", image_size=16, skip_unreadable=True, target_labels=labelled
        )
    assert pair.skipped_files == sorted(map(str, bad))
    assert "skipping 2 unreadable image file(s)" in caplog.text
    for name in ("target_train", "target_val", "target_eval", "target_holdout", "target_adapt_images"):
        ds = getattr(pair, name)
        if ds is None:
            continue
        assert not set(bad) & set(per_sample(ds, "paths")), name
        for i in range(len(ds)):
            ds[i]  # everything left decodes
    total = sum(pair.splits[n].get("unreadable_skipped", 0) for n in ("target_eval", "target_train"))
    assert total >= 1
    if not labelled:
        assert len(pair.target_eval) == 3 * PER_CLASS - 2
        assert pair.splits["target_eval"]["unreadable_skipped"] == 2
