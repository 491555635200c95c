"""Folder-per-domain datasets (``<root>/<Dataset>/<domain>/<class>/<image>``) built in ``tmp_path``.

Images are symlinks to a few real PACS jpgs (the data root stays untouched).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from shiftlab.data.base import held_out
from shiftlab.data.pair import build_domain_pair
from shiftlab.data.registry import get_dataset, register_folder_dataset
from shiftlab.data.splits import keys_of
from shiftlab.errors import DataError

DOMAINS = ("real", "sketchy")
CLASSES = ("cat", "dog", "fox")
PER_CLASS = 8
NAMES = [f"img_{i:02d}.jpg" for i in range(PER_CLASS)]


@pytest.fixture(scope="module")
def sources(data_root) -> list[Path]:
    folder = data_root / "PACS" / "photo" / "dog"
    files = sorted(folder.iterdir())[:4]
    assert len(files) == 4
    return files


def make_folder_dataset(base: Path, sources: list[Path], layout: dict[str, dict[str, list[str]]]) -> Path:
    """``base/<domain>/<class>/<name>`` symlinked to real jpgs; an empty name list makes an empty folder."""
    for domain, classes in layout.items():
        for cls, names in classes.items():
            folder = base / domain / cls
            folder.mkdir(parents=True)
            for i, name in enumerate(names):
                (folder / name).symlink_to(sources[i % len(sources)])
    return base


def standard_layout(domains=DOMAINS, classes=CLASSES) -> dict[str, dict[str, list[str]]]:
    return {d: {c: list(NAMES) for c in classes} for d in domains}


@pytest.fixture
def toy(tmp_path, sources) -> Path:
    """The data root: ``tmp_path/root/Toy`` with 2 domains x 3 classes x 8 images."""
    root = tmp_path / "root"
    make_folder_dataset(root / "Toy", sources, standard_layout())
    return root


def expected_val(domain: str) -> set[str]:
    """The held-out keys, computed here from the documented rule: sha1 of the relative path, first 4
    bytes big-endian, below 10% of 2**32."""
    keys = [f"{domain}/{c}/{n}" for c in CLASSES for n in NAMES]
    return {k for k in keys if int.from_bytes(hashlib.sha1(k.encode()).digest()[:4], "big") < 0.1 * 2**32}


def keys(ds, root: Path) -> list[str]:
    return [str(p.relative_to(root / "Toy")) for p, _ in ds.samples]


# --- loading and labels ----------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [CLASSES, None])
def test_load_test_split(toy, classes):
    spec = register_folder_dataset("toy_ds", DOMAINS, classes, folder_name="Toy")
    assert get_dataset("toy_ds") is spec
    assert spec.domains == DOMAINS
    for domain in DOMAINS:
        ds = spec.dataset(toy, domain, "test")
        assert len(ds) == 3 * PER_CLASS
        assert list(ds.classes) == list(CLASSES)
        assert ds.targets == [0] * 8 + [1] * 8 + [2] * 8
        assert keys(ds, toy) == [f"{domain}/{c}/{n}" for c in CLASSES for n in NAMES]
        for path, label in ds.samples:
            assert path.parent.name == CLASSES[label]
            assert path.parent.parent.name == domain
    img, label = spec.dataset(toy, "sketchy", "test")[9]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (227, 227)
    assert label == 1


def test_registered_class_order_sets_labels(toy):
    spec = register_folder_dataset("toy_ds", DOMAINS, ("fox", "cat", "dog"), folder_name="Toy")
    ds = spec.dataset(toy, "real", "test")
    assert ds.classes == ["fox", "cat", "dog"]
    assert ds.targets == [0] * 8 + [1] * 8 + [2] * 8
    assert {p.parent.name for p, y in ds.samples if y == 0} == {"fox"}


def test_folder_name_defaults_to_name(tmp_path, sources):
    root = tmp_path / "root"
    make_folder_dataset(root / "MySet", sources, standard_layout())
    spec = register_folder_dataset("MySet", DOMAINS)
    assert len(spec.dataset(root, "real", "test")) == 24


def test_non_images_and_hidden_folders_are_ignored(toy):
    (toy / "Toy" / "real" / "cat" / "notes.txt").write_text("not an image")
    (toy / "Toy" / "real" / ".cache").mkdir()
    (toy / "Toy" / "real" / "dog" / "IMG_UPPER.JPG").symlink_to(toy / "Toy" / "real" / "dog" / "img_00.jpg")
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    ds = spec.dataset(toy, "real", "test")
    assert len(ds) == 25
    assert ds.targets.count(1) == 9
    assert not any(p.name == "notes.txt" for p, _ in ds.samples)


# --- the hash split --------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", DOMAINS)
def test_train_val_partition_test(toy, domain):
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    train, val, test = (keys(spec.dataset(toy, domain, s), toy) for s in ("train", "val", "test"))
    assert set(val) == expected_val(domain)
    assert len(val) >= 1 and len(train) >= 1  # these file names give a non-empty split both ways
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(test)
    assert len(train) + len(val) == len(test) == 24
    # order follows the test list (class, then name)
    assert train == [k for k in test if k in set(train)]
    # labels carried through unchanged
    ds_val = spec.dataset(toy, domain, "val")
    assert all(p.parent.name == CLASSES[y] for p, y in ds_val.samples)


def test_split_is_deterministic_and_stable_when_files_are_added(toy, sources):
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    first = keys(spec.dataset(toy, "real", "val"), toy)
    assert keys(spec.dataset(toy, "real", "val"), toy) == first
    for i in range(8, 40):
        (toy / "Toy" / "real" / "fox" / f"img_{i:02d}.jpg").symlink_to(sources[0])
    again = keys(spec.dataset(toy, "real", "val"), toy)
    assert [k for k in again if int(k[-6:-4]) < 8 or not k.startswith("real/fox/")] == first
    assert len(spec.dataset(toy, "real", "test")) == 56


# --- class sets that differ, empty folders ---------------------------------------------------------


def test_domain_lacking_a_registered_class_loads(tmp_path, sources):
    """Real datasets have domains without some classes: the domain loads, labels stay the list's positions."""
    root = tmp_path / "root"
    layout = standard_layout()
    del layout["sketchy"]["dog"]
    make_folder_dataset(root / "Toy", sources, layout)
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    assert len(spec.dataset(root, "real", "test")) == 24
    ds = spec.dataset(root, "sketchy", "test")
    assert ds.classes == list(CLASSES)
    assert ds.targets == [0] * 8 + [2] * 8
    assert {p.parent.name for p, y in ds.samples if y == 2} == {"fox"}


def test_extra_class_registered(tmp_path, sources):
    root = tmp_path / "root"
    layout = standard_layout()
    layout["real"]["zebra"] = ["z.jpg"]
    make_folder_dataset(root / "Toy", sources, layout)
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    with pytest.raises(DataError) as err:
        spec.dataset(root, "real", "test")
    msg = str(err.value)
    assert str(root / "Toy" / "real") in msg
    assert "unexpected 1: zebra" in msg
    assert "valid classes: cat, dog, fox" in msg
    assert "missing" not in msg
    assert len(spec.dataset(root, "sketchy", "test")) == 24


@pytest.mark.parametrize("change", ["missing", "extra"])
@pytest.mark.parametrize("load_domain", DOMAINS)
def test_unregistered_classes_are_the_union_of_the_domains(tmp_path, sources, change, load_domain):
    """Without a class list, the classes are every domain's class folders together, so that one domain
    lacking a class never stops another from loading, and labels agree between domains."""
    root = tmp_path / "root"
    layout = standard_layout()
    if change == "missing":
        del layout["sketchy"]["fox"]
        union = CLASSES
    else:
        layout["sketchy"]["zebra"] = ["z.jpg"]
        union = CLASSES + ("zebra",)
    make_folder_dataset(root / "Toy", sources, layout)
    spec = register_folder_dataset("toy_ds", DOMAINS, None, folder_name="Toy")
    ds = spec.dataset(root, load_domain, "test")
    assert ds.classes == list(union)
    for path, label in ds.samples:
        assert union[label] == path.parent.name
    assert len(ds) == (
        16
        if change == "missing" and load_domain == "sketchy"
        else 25
        if change == "extra" and load_domain == "sketchy"
        else 24
    )


def test_empty_class_folder(tmp_path, sources):
    root = tmp_path / "root"
    layout = standard_layout()
    layout["sketchy"]["dog"] = []
    make_folder_dataset(root / "Toy", sources, layout)
    (root / "Toy" / "sketchy" / "dog" / "readme.txt").write_text("no images here")
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    with pytest.raises(DataError) as err:
        spec.dataset(root, "sketchy", "test")
    assert f"class folder has no images: {root / 'Toy' / 'sketchy' / 'dog'} " in str(err.value)


def test_missing_domain_folder(tmp_path, sources):
    root = tmp_path / "root"
    make_folder_dataset(root / "Toy", sources, standard_layout(domains=("real",)))
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    with pytest.raises(DataError, match="domain folder not found") as err:
        spec.dataset(root, "sketchy", "test")
    assert str(root / "Toy" / "sketchy") in str(err.value)


def test_unknown_domain_registered(toy):
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    with pytest.raises(DataError) as err:
        spec.dataset(toy, "sketch", "test")
    msg = str(err.value)
    assert "unknown domain 'sketch' for dataset 'toy_ds'" in msg
    assert "valid domains: real, sketchy" in msg
    assert "Did you mean 'sketchy'?" in msg


def test_corrupt_image_raises_on_item(toy):
    bad = toy / "Toy" / "real" / "fox" / "img_03.jpg"
    bad.unlink()
    bad.write_bytes(b"\x00\xffgarbage" * 64)
    spec = register_folder_dataset("toy_ds", DOMAINS, CLASSES, folder_name="Toy")
    ds = spec.dataset(toy, "real", "test")
    index = keys(ds, toy).index("real/fox/img_03.jpg")
    assert ds[index - 1][1] == 2
    with pytest.raises(DataError) as err:
        ds[index]
    assert str(bad) in str(err.value)


# --- folder:<Name> discovery -----------------------------------------------------------------------


def expected_holdout(domain: str) -> set[str]:
    """The target holdout, from the documented rule: sha1 of 'holdout/<key>' below 20% (tested in
    test_target_splits.py against an independent computation)."""
    keys = [f"{domain}/{c}/{n}" for c in CLASSES for n in NAMES]
    return {k for k in keys if held_out("holdout/" + k, 0.2)}


def test_discovery_pair(toy):
    pair = build_domain_pair("folder:Toy", toy, "real", "sketchy", image_size=32)
    spec = get_dataset("folder:Toy", toy)
    assert pair.spec.name == spec.name == "folder:Toy"
    assert spec.domains == DOMAINS
    assert spec.classes == CLASSES
    assert pair.classes == list(CLASSES)
    assert pair.num_classes == 3
    n_val = {d: len(expected_val(d)) for d in DOMAINS}
    assert len(pair.source_train) == 24 - n_val["real"]
    assert len(pair.source_val) == n_val["real"]
    assert len(pair.target_train) == len(pair.target_eval) == 24
    assert pair.target_eval_split == "test"
    assert set(keys_of(pair.target_holdout)) == expected_holdout("sketchy")
    x, y = pair.source_train[0]
    assert x.shape == (3, 32, 32) and y == 0
    x, y = pair.target_eval[23]
    assert x.shape == (3, 32, 32) and y == 2
    item = pair.target_train[0]
    assert isinstance(item, torch.Tensor) and item.shape == (3, 32, 32)


def test_discovery_is_not_registered(toy):
    """folder:<Name> is read from the disk each time: nothing is left in the registry for the next run."""
    from shiftlab.data import registry

    before = dict(registry._REGISTRY)
    build_domain_pair("folder:Toy", toy, "real", "sketchy", image_size=32)
    assert registry._REGISTRY == before
    with pytest.raises(DataError, match="names starting with 'folder:'"):
        registry.register(get_dataset("folder:Toy", toy))


def test_discovery_pair_labelled_target(toy):
    pair = build_domain_pair("folder:Toy", toy, "sketchy", "real", image_size=32, target_labels=True)
    holdout = expected_holdout("real")
    assert set(keys_of(pair.target_eval)) == holdout
    assert set(keys_of(pair.target_val)) == expected_val("real") - holdout
    assert (
        set(keys_of(pair.target_train))
        == {f"real/{c}/{n}" for c in CLASSES for n in NAMES} - expected_val("real") - holdout
    )
    assert pair.target_holdout is None  # it is target_eval
    assert pair.target_eval_split == "test:holdout"
    x, y = pair.target_train[0]
    assert x.shape == (3, 32, 32) and type(y) is int


def test_discovery_domains_from_disk(tmp_path, sources):
    root = tmp_path / "root"
    make_folder_dataset(root / "Three", sources, standard_layout(domains=("b_dom", "a_dom", "c_dom")))
    (root / "Three" / ".hidden").mkdir()
    (root / "Three" / "stray.txt").write_text("x")
    pair = build_domain_pair("folder:Three", root, "c_dom", "a_dom", image_size=32, limit=5)
    assert pair.spec.domains == ("a_dom", "b_dom", "c_dom")
    assert len(pair.source_train) == 5 and len(pair.target_eval) == 5


def test_discovery_unknown_domain(toy):
    with pytest.raises(DataError) as err:
        build_domain_pair("folder:Toy", toy, "real", "painting")
    msg = str(err.value)
    assert "unknown target domain 'painting' for dataset 'folder:Toy'" in msg
    assert "valid domains: real, sketchy" in msg
    with pytest.raises(DataError, match="unknown source domain 'photo'.*valid domains: real, sketchy"):
        build_domain_pair("folder:Toy", toy, "photo", "real")


def test_discovery_missing_dataset_folder(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError) as err:
        build_domain_pair("folder:Nope", tmp_path / "root", "a", "b")
    assert f"dataset folder not found: {tmp_path / 'root' / 'Nope'}" in str(err.value)


def test_discovery_no_domains(tmp_path):
    (tmp_path / "root" / "Empty").mkdir(parents=True)
    with pytest.raises(DataError, match="no domain folders"):
        build_domain_pair("folder:Empty", tmp_path / "root", "a", "b")


def test_discovery_target_class_the_source_lacks(tmp_path, sources):
    root = tmp_path / "root"
    layout = standard_layout()
    layout["sketchy"]["zebra"] = ["z.jpg"]
    make_folder_dataset(root / "Toy", sources, layout)
    with pytest.raises(DataError) as err:
        build_domain_pair("folder:Toy", root, "real", "sketchy")
    assert "target 'sketchy' has images of class(es) that source 'real' has none of: zebra" in str(err.value)
    pair = build_domain_pair("folder:Toy", root, "sketchy", "real", image_size=32)  # the other way: a warning
    assert pair.missing_target_classes == ["zebra"]


def test_keys_are_paths_relative_to_the_dataset_folder_however_the_samples_are_written(tmp_path):
    from shiftlab.data.base import ImageListDataset

    root = tmp_path / "PACS"
    samples = [
        (root / "cartoon" / "dog" / "pic_001.jpg", 0),  # a Path under the root: the fast string slice
        (str(root / "photo" / "dog" / "a.jpg"), 0),  # a string
        (Path(f"{root}//sketch/./dog/b.png"), 1),  # written oddly: Path normalises it
    ]
    keys = ImageListDataset(samples, ["dog"], key_root=root).keys
    assert keys == ["cartoon/dog/pic_001.jpg", "photo/dog/a.jpg", "sketch/dog/b.png"]
    with pytest.raises(ValueError):  # a file outside the dataset's folder has no key
        _ = ImageListDataset([(tmp_path / "elsewhere.jpg", 0)], ["dog"], key_root=root).keys
