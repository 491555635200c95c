"""``shiftlab datasets``: the report on the real PACS copy and on broken copies built in ``tmp_path``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shiftlab.cli import main
from shiftlab.data.registry import register_folder_dataset

PACS_IMAGES = {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["datasets", *args])
    out, err = capsys.readouterr()
    return code, out, err


def domain_line(out: str, domain: str) -> str:
    lines = [line for line in out.splitlines() if re.match(rf"^  {re.escape(domain)}\s", line)]
    assert len(lines) == 1, out
    return lines[0]


def make_toy(root: Path, data_root: Path, extra: dict[str, list[str]] | None = None) -> Path:
    """``root/Toy/{real,sketchy}/{cat,dog}/img_{0,1,2}.jpg`` symlinked to real jpgs, plus ``extra`` class
    folders per domain."""
    src = sorted((data_root / "PACS" / "photo" / "dog").iterdir())[:3]
    for domain in ("real", "sketchy"):
        for cls in ["cat", "dog", *(extra or {}).get(domain, [])]:
            folder = root / "Toy" / domain / cls
            folder.mkdir(parents=True)
            for i, s in enumerate(src):
                (folder / f"img_{i}.jpg").symlink_to(s)
    return root


def test_real_pacs(capsys, data_root):
    code, out, _ = run(capsys, "--root", str(data_root), "--dataset", "pacs")
    assert code == 0
    assert out.splitlines()[0] == f"data root: {data_root}"
    assert "pacs (7 classes)" in out
    for domain, n in PACS_IMAGES.items():
        line = domain_line(out, domain)
        assert re.fullmatch(rf"  {domain}\s+{n} images", line), line
    assert "MISSING" not in out
    assert "!" not in out
    assert "office31" not in out  # only the dataset asked for


def test_real_pacs_json(capsys, data_root):
    code, out, _ = run(capsys, "--root", str(data_root), "--dataset", "pacs", "--json")
    assert code == 0
    reports = json.loads(out)
    assert [r["dataset"] for r in reports] == ["pacs"]
    (pacs,) = reports
    assert pacs["num_classes"] == 7
    assert pacs["embedded"] is False
    assert {d["domain"]: d["images"] for d in pacs["domains"]} == PACS_IMAGES
    for d in pacs["domains"]:
        assert d["present"] is True
        assert d["problems"] == []
        assert d["classes"] == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]


def test_pacs_missing_domain(capsys, tmp_path, data_root):
    root = tmp_path / "root"
    (root / "PACS").mkdir(parents=True)
    for d in ("art_painting", "cartoon", "sketch"):
        (root / "PACS" / d).symlink_to(data_root / "PACS" / d, target_is_directory=True)
    (root / "PACS" / "splits").symlink_to(data_root / "PACS" / "splits", target_is_directory=True)
    code, out, _ = run(capsys, "--root", str(root), "--dataset", "pacs")
    assert code == 1
    assert re.fullmatch(r"  photo\s+MISSING", domain_line(out, "photo"))
    assert f"! missing folder {root / 'PACS' / 'photo'}" in out
    for domain in ("art_painting", "cartoon", "sketch"):
        assert re.fullmatch(rf"  {domain}\s+{PACS_IMAGES[domain]} images", domain_line(out, domain))

    code, out, _ = run(capsys, "--root", str(root), "--dataset", "pacs", "--json")
    assert code == 1
    domains = {d["domain"]: d for d in json.loads(out)[0]["domains"]}
    assert domains["photo"]["present"] is False
    assert domains["photo"]["images"] == 0
    assert [d for d, r in domains.items() if r["problems"]] == ["photo"]


def test_pacs_broken_split_list(capsys, tmp_path, data_root):
    root = tmp_path / "root"
    (root / "PACS" / "splits").mkdir(parents=True)
    (root / "PACS" / "cartoon").symlink_to(data_root / "PACS" / "cartoon", target_is_directory=True)
    for f in (data_root / "PACS" / "splits").glob("cartoon_*"):
        (root / "PACS" / "splits" / f.name).write_text(f.read_text())
    lst = root / "PACS" / "splits" / "cartoon_train_kfold.txt"
    lst.write_text(lst.read_text() + "cartoon/dog/gone.jpg 1\n")
    code, out, _ = run(capsys, "--root", str(root), "--dataset", "pacs")
    assert code == 1
    assert re.fullmatch(r"  cartoon\s+2344 images, 1 problem\(s\)", domain_line(out, "cartoon"))
    assert f"{lst}:2108: listed image does not exist" in out
    for domain in ("art_painting", "photo", "sketch"):
        assert "MISSING" in domain_line(out, domain)


def test_pacs_malformed_label_is_reported(capsys, tmp_path, data_root):
    """A malformed label is a problem in the report (exit 1), not a crash of the command (exit 2)."""
    root = tmp_path / "root"
    (root / "PACS" / "splits").mkdir(parents=True)
    (root / "PACS" / "photo").symlink_to(data_root / "PACS" / "photo", target_is_directory=True)
    for f in (data_root / "PACS" / "splits").glob("photo_*"):
        (root / "PACS" / "splits" / f.name).write_text(f.read_text())
    lst = root / "PACS" / "splits" / "photo_crossval_kfold.txt"
    first, rest = lst.read_text().split("\n", 1)
    lst.write_text(first.split()[0] + " --1\n" + rest)
    code, out, err = run(capsys, "--root", str(root), "--dataset", "pacs")
    assert code == 1
    assert "error" not in err
    assert re.fullmatch(r"  photo\s+1670 images, 1 problem\(s\)", domain_line(out, "photo"))
    assert f"! {lst}:1: expected '<domain>/<class>/<file> <label>'" in out


def test_folder_dataset_ok(capsys, tmp_path, data_root):
    root = make_toy(tmp_path / "root", data_root)
    register_folder_dataset("toy_cli", ("real", "sketchy"), None, folder_name="Toy")
    code, out, _ = run(capsys, "--root", str(root), "--dataset", "toy_cli")
    assert code == 0
    assert "toy_cli (2 classes)" in out
    assert re.fullmatch(r"  real\s+6 images", domain_line(out, "real"))
    assert re.fullmatch(r"  sketchy\s+6 images", domain_line(out, "sketchy"))


def test_folder_dataset_extra_class_registered(capsys, tmp_path, data_root):
    root = make_toy(tmp_path / "root", data_root, extra={"sketchy": ["zebra"]})
    register_folder_dataset("toy_cli", ("real", "sketchy"), ("cat", "dog"), folder_name="Toy")
    code, out, _ = run(capsys, "--root", str(root), "--dataset", "toy_cli")
    assert code == 1
    assert "problem" not in domain_line(out, "real")
    # one difference, reported once (a registered class list used to report it twice)
    assert re.fullmatch(r"  sketchy\s+9 images, 1 problem\(s\)", domain_line(out, "sketchy"))
    problems = [line for line in out.splitlines() if line.startswith("      ! ")]
    assert len(problems) == 1 and "unexpected 1: zebra" in problems[0]

    code, out, _ = run(capsys, "--root", str(root), "--dataset", "toy_cli", "--json")
    assert code == 1
    domains = {d["domain"]: d for d in json.loads(out)[0]["domains"]}
    assert domains["sketchy"]["classes"] == ["cat", "dog", "zebra"]
    assert domains["real"]["problems"] == []
    assert len(domains["sketchy"]["problems"]) == 1 and "zebra" in domains["sketchy"]["problems"][0]


@pytest.mark.parametrize("name", ["toy_cli", "folder:Toy"])
def test_folder_dataset_union_of_classes(capsys, tmp_path, data_root, name):
    """Without a class list (registered with None, or folder:<Name> as `train` takes it), the classes are the
    union of the domains': a domain lacking one is a note, not a problem, since training handles it."""
    root = make_toy(tmp_path / "root", data_root, extra={"sketchy": ["zebra"]})
    register_folder_dataset("toy_cli", ("real", "sketchy"), None, folder_name="Toy")
    code, out, _ = run(capsys, "--root", str(root), "--dataset", name)
    assert code == 0, out
    assert f"{name} (3 classes)" in out
    assert re.fullmatch(r"  real\s+6 images", domain_line(out, "real"))
    assert re.fullmatch(r"  sketchy\s+9 images", domain_line(out, "sketchy"))
    assert "      note: no images of 1 of the dataset's 3 classes: missing 1: zebra" in out
    assert "!" not in out

    code, out, _ = run(capsys, "--root", str(root), "--dataset", name, "--json")
    domains = {d["domain"]: d for d in json.loads(out)[0]["domains"]}
    assert domains["real"]["problems"] == [] and "zebra" in domains["real"]["notes"][0]
    assert domains["sketchy"]["notes"] == []


def test_folder_prefix_verify_and_errors(capsys, tmp_path, data_root):
    """`shiftlab datasets --dataset folder:NAME [--verify]` reads the folder as `train` does."""
    root = make_toy(tmp_path / "root", data_root)
    bad = root / "Toy" / "real" / "cat" / "img_2.jpg"
    bad.unlink()
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 20)
    code, out, _ = run(capsys, "--root", str(root), "--dataset", "folder:Toy", "--verify")
    assert code == 1
    assert re.fullmatch(r"  real\s+6 images, 1 problem\(s\)", domain_line(out, "real"))
    assert f"! cannot decode image {bad}" in out
    code, out, err = run(capsys, "--root", str(root), "--dataset", "folder:Nope")
    assert code == 2 and out == ""
    assert f"dataset folder not found: {root / 'Nope'}" in err


def test_lists_the_shifts(capsys, tmp_path):
    code, out, _ = run(capsys, "--root", str(tmp_path), "--dataset", "demo")
    assert code == 0
    shifts = out[out.index("shifts (derive a domain") :]
    assert re.search(r"^  brightness\(delta: float\)\s+adds delta", shifts, re.M)
    assert re.search(r"^  greyscale\(\)\s+grey image", shifts, re.M)


def test_folder_dataset_missing_class(capsys, tmp_path, data_root):
    root = make_toy(tmp_path / "root", data_root, extra={"real": ["owl"]})
    register_folder_dataset("toy_cli", ("real", "sketchy"), ("cat", "dog", "owl"), folder_name="Toy")
    code, out, _ = run(capsys, "--root", str(root), "--dataset", "toy_cli")
    assert code == 1
    assert "problem" not in domain_line(out, "real")
    assert "missing 1: owl" in out


def test_verify_reports_corrupt_image(capsys, tmp_path, data_root):
    root = make_toy(tmp_path / "root", data_root)
    bad = root / "Toy" / "sketchy" / "dog" / "img_1.jpg"
    bad.unlink()
    bad.write_bytes(b"GARBAGE" * 100)
    register_folder_dataset("toy_cli", ("real", "sketchy"), None, folder_name="Toy")

    code, out, _ = run(capsys, "--root", str(root), "--dataset", "toy_cli")
    assert code == 0  # without --verify the files are only listed, not decoded
    assert str(bad) not in out

    code, out, _ = run(capsys, "--root", str(root), "--dataset", "toy_cli", "--verify")
    assert code == 1
    assert re.fullmatch(r"  sketchy\s+6 images, 1 problem\(s\)", domain_line(out, "sketchy"))
    assert "problem" not in domain_line(out, "real")
    assert f"! cannot decode image {bad}" in out
    assert out.count("cannot decode") == 1

    code, out, _ = run(capsys, "--root", str(root), "--dataset", "toy_cli", "--verify", "--json")
    assert code == 1
    domains = {d["domain"]: d for d in json.loads(out)[0]["domains"]}
    assert len(domains["sketchy"]["problems"]) == 1 and str(bad) in domains["sketchy"]["problems"][0]
    assert domains["real"]["problems"] == []


def test_verify_pacs_copy_with_corrupt_image(capsys, tmp_path, data_root):
    """A PACS root in tmp with one domain of two images, one of them corrupt."""
    root = tmp_path / "root"
    splits = root / "PACS" / "splits"
    splits.mkdir(parents=True)
    for cls in ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"):
        (root / "PACS" / "photo" / cls).mkdir(parents=True)
    good = root / "PACS" / "photo" / "dog" / "good.jpg"
    good.symlink_to(data_root / "PACS" / "photo" / "dog" / "056_0001.jpg")
    bad = root / "PACS" / "photo" / "house" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for cls in ("elephant", "giraffe", "guitar", "horse", "person"):
        (root / "PACS" / "photo" / cls / "x.jpg").symlink_to(good)
    (splits / "photo_test_kfold.txt").write_text("photo/dog/good.jpg 1\nphoto/house/bad.jpg 6\n")
    (splits / "photo_train_kfold.txt").write_text("photo/dog/good.jpg 1\n")
    (splits / "photo_crossval_kfold.txt").write_text("photo/house/bad.jpg 6\n")
    code, out, _ = run(capsys, "--root", str(root), "--dataset", "pacs", "--verify")
    assert code == 1
    assert re.fullmatch(r"  photo\s+7 images, 1 problem\(s\)", domain_line(out, "photo"))
    assert f"! cannot decode image {bad}" in out


def test_unknown_dataset(capsys, tmp_path):
    code, out, err = run(capsys, "--root", str(tmp_path), "--dataset", "packs")
    assert code == 2
    assert out == ""
    assert "unknown dataset 'packs'" in err
    assert "Did you mean 'pacs'?" in err


def test_root_that_does_not_exist(capsys, tmp_path):
    code, out, _ = run(capsys, "--root", str(tmp_path / "nowhere"), "--dataset", "pacs")
    assert code == 1
    assert out.splitlines()[0] == f"data root: {tmp_path / 'nowhere'}  (does not exist)"
    for domain in PACS_IMAGES:
        assert re.fullmatch(rf"  {domain}\s+MISSING", domain_line(out, domain))


def test_listing_everything_does_not_fail_on_datasets_never_downloaded(capsys, data_root):
    code, out, _ = run(capsys, "--root", str(data_root))
    assert code == 0
    assert re.search(r"office31 \(31 classes\).*\n  not on disk: amazon, dslr, webcam", out)
    assert domain_line(out, "cartoon").split()[1] == "2344"
