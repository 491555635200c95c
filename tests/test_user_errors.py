"""User errors that printed a traceback: each is now a one-line message naming the key, file or folder
(issue 31, "One-line errors where a traceback is printed today"; issue 27 §3). Small synthetic files only."""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab import cli
from shiftlab.config import ConfigError, build_config
from shiftlab.data import decoded
from shiftlab.data.base import ArrayDataset, load_rgb
from shiftlab.data.pair import build_domain_pair
from shiftlab.data.splits import fingerprint, per_sample
from shiftlab.errors import DataError, ShiftlabError, TrainingDivergedError
from shiftlab.sweep.spec import SweepError, load_sweep
from shiftlab.utils import read_yaml_mapping

CLASSES = ("ant", "bee")
PER_CLASS = 6


def one_error_line(capsys, command: str) -> str:
    """The command's stderr, checked to be exactly one error line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"shiftlab {command}: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


# --- config values (1) ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["18446744073709551616", "9223372036854775808", "-1"])
def test_a_seed_torch_cannot_take_is_a_config_error(seed):
    with pytest.raises(ConfigError, match=r"experiment\.seed: .*from 0 to 9223372036854775807 .*" + seed):
        build_config([], [f"--experiment.seed={seed}"])


def test_the_largest_seed_is_accepted():
    assert build_config([], ["--experiment.seed=9223372036854775807"]).experiment.seed == 2**63 - 1


def test_an_unknown_device_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"train\.device: .*valid: auto, cpu, cuda, mps, or cuda:N.*'banana'"):
        build_config([], ["--train.device=banana"])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_known_devices_pass_validation(device):
    assert build_config([], [f"--train.device={device}"]).train.device == device


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../outside", "a/../../b", ".", ""])
def test_a_run_name_outside_the_output_folder_is_refused(name):
    with pytest.raises(ConfigError, match=r"experiment\.name: .*relative folder name under experiment\.output_dir"):
        build_config([], [f"--experiment.name={name}"])


def test_a_nested_run_name_is_accepted():
    assert build_config([], ["--experiment.name=baseline/cartoon"]).experiment.name == "baseline/cartoon"


def test_train_with_a_bad_device_prints_one_line(capsys):
    assert cli.main(["train", "--train.device=banana"]) == 2
    assert "train.device" in one_error_line(capsys, "train")


# --- image files: names that are not UTF-8 (2) and decompression bombs (3) ----------------------------


def make_domains(root: Path) -> Path:
    """``root/Cams/{a,b}/{ant,bee}/img_X.png``: 16 px PNGs, one colour per class."""
    for d, domain in enumerate(("a", "b")):
        for c, cls in enumerate(CLASSES):
            folder = root / "Cams" / domain / cls
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                Image.new("RGB", (16, 16), (120 * c, 20 * i, 90 * d)).save(folder / f"img_{i}.png")
    return root


def non_utf8_path(folder: Path) -> Path:
    """``folder/bad\\xff.png``: a name whose bytes are not UTF-8 (Python holds it with a surrogate)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/bad\xff.png"))


def png_announcing(path: Path, width: int, height: int) -> Path:
    """A PNG of a few bytes whose header announces ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def cams(tmp_path) -> Path:
    return make_domains(tmp_path / "root")


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data.dataset=folder:Cams",
        f"--data.root={root}",
        "--data.source=a",
        "--data.target=b",
        "--model.name=small_cnn",
        "--data.image_size=16",
        "--train.epochs=1",
        "--train.steps_per_epoch=1",
        "--data.batch_size=4",
        "--train.progress=false",
        "--train.device=cpu",
        "--train.validators=[]",
        f"--experiment.output_dir={out}",
        "--experiment.name=run",
        *extra,
    ]


def test_a_non_utf8_file_name_is_read_like_any_other(cams):
    bad = non_utf8_path(cams / "Cams" / "b" / "ant")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(bad, format="PNG")
    pair = build_domain_pair("folder:Cams", cams, "a", "b", image_size=16)
    paths = per_sample(pair.target_eval, "paths")
    assert bad in paths
    image, label = pair.target_eval[paths.index(bad)]
    assert image.shape == (3, 16, 16) and label == 0
    assert len(fingerprint(pair.target_eval)) == 12
    split = decoded.decode_split(pair.target_eval.base, 16)  # the cache names a split by hashing its paths
    assert len(split) == len(paths)


def test_an_unreadable_non_utf8_file_is_named_with_escapes_and_skipped(cams):
    bad = non_utf8_path(cams / "Cams" / "b" / "bee")
    bad.write_bytes(b"not an image" * 10)
    with pytest.raises(DataError) as err:
        load_rgb(bad)
    message = str(err.value)
    assert f"cannot decode image {cams}/Cams/b/bee/bad\\xff.png" in message
    message.encode("utf-8")  # printable and writable as it is
    pair = build_domain_pair("folder:Cams", cams, "a", "b", image_size=16, skip_unreadable=True)
    assert pair.skipped_files == [f"{cams}/Cams/b/bee/bad\\xff.png"]


def test_train_reads_a_non_utf8_file_name(cams, tmp_path, capsys):
    Image.new("RGB", (16, 16), (1, 2, 3)).save(non_utf8_path(cams / "Cams" / "b" / "ant"), format="PNG")
    assert cli.main(train_args(cams, tmp_path / "runs")) == 0
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert summary["splits"]["target_eval"]["size"] == 2 * PER_CLASS + 1


@pytest.mark.parametrize("side", [20000, 12000])  # PIL: an error above twice its limit, a warning above it
def test_a_decompression_bomb_is_an_unreadable_file(tmp_path, side):
    bomb = png_announcing(tmp_path / "bomb.png", side, side)
    with pytest.raises(DataError, match=f"cannot decode image {bomb}: .*decompression bomb.*data.skip_unreadable"):
        load_rgb(bomb)


def test_a_decompression_bomb_stops_train_with_one_line(cams, tmp_path, capsys):
    bomb = png_announcing(cams / "Cams" / "b" / "ant" / "bomb.png", 20000, 20000)
    assert cli.main(train_args(cams, tmp_path / "runs")) == 2
    assert f"cannot decode image {bomb}" in one_error_line(capsys, "train")


def test_a_decompression_bomb_is_skipped_and_listed(cams, tmp_path, caplog):
    bomb = png_announcing(cams / "Cams" / "b" / "ant" / "bomb.png", 20000, 20000)
    pair = build_domain_pair("folder:Cams", cams, "a", "b", image_size=16, skip_unreadable=True)
    assert pair.skipped_files == [str(bomb)]
    assert bomb not in per_sample(pair.target_eval, "paths")


def test_datasets_verify_reports_a_decompression_bomb(cams, capsys):
    bomb = png_announcing(cams / "Cams" / "b" / "ant" / "bomb.png", 20000, 20000)
    assert cli.main(["datasets", "--root", str(cams), "--dataset", "folder:Cams", "--verify"]) == 1
    out = capsys.readouterr()
    assert f"! cannot decode image {bomb}: Image size (400000000 pixels) exceeds limit" in out.out
    assert "Traceback" not in out.err


# --- a decoded cache that cannot be written (4) -------------------------------------------------------


@pytest.fixture
def small_split(tmp_path, monkeypatch):
    """An in-memory dataset, a private cache and no split held in memory."""
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path / "cache"))
    decoded._MEMORY.clear()  # no split held in memory
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    yield ArrayDataset(images, [0, 1, 0, 1, 0], ["x", "y"])
    decoded._MEMORY.clear()  # no split held in memory


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nframe #0: c10::Error"),
    ],
)
def test_a_full_cache_disk_is_a_warning_and_the_split_is_decoded_in_memory(
    small_split, tmp_path, monkeypatch, caplog, failure
):
    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise failure

    monkeypatch.setattr(decoded.torch, "save", full_disk)
    with caplog.at_level(logging.WARNING, logger="shiftlab.data.decoded"):
        split = decoded.decode_split(small_split, 8)
    assert split.images.shape == (5, 3, 8, 8)
    assert torch.equal(split.images[2].permute(1, 2, 0), torch.from_numpy(small_split.images[2]))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"cannot write the decoded cache in {tmp_path / 'cache' / 'decoded'}" in warning
    assert "\n" not in warning
    assert list((tmp_path / "cache" / "decoded").iterdir()) == []  # no partial file left


def test_a_cache_folder_that_cannot_be_created_is_a_warning(small_split, tmp_path, monkeypatch, caplog):
    (tmp_path / "not_a_folder").write_text("a file where the cache folder should be")
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path / "not_a_folder"))
    with caplog.at_level(logging.WARNING, logger="shiftlab.data.decoded"):
        split = decoded.decode_split(small_split, 8)
    assert len(split) == 5
    assert "cannot create the decoded cache folder under $SHIFTLAB_CACHE" in caplog.text


# --- one YAML reader (7) --------------------------------------------------------------------------------


def test_read_yaml_mapping_names_the_file_and_the_line_of_a_yaml_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ngrid: [1, 2\n")
    with pytest.raises(SweepError) as err:
        read_yaml_mapping(path, "sweep file", SweepError)
    assert str(err.value).startswith(f"cannot parse sweep file {path}: ")
    assert "line 3" in str(err.value) and "\n" not in str(err.value)


def test_read_yaml_mapping_refuses_a_list_and_reads_an_empty_file(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'list.yaml'} must hold a mapping.*list"):
        read_yaml_mapping(tmp_path / "list.yaml", "config file")
    assert read_yaml_mapping(tmp_path / "empty.yaml", "config file") == {}


def test_read_yaml_mapping_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=f"reference file not found: {tmp_path / 'nope.yaml'}"):
        read_yaml_mapping(tmp_path / "nope.yaml", "reference file")


def test_a_malformed_sweep_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("grid:\n  method.name: [a, b\n")
    with pytest.raises(SweepError, match=f"cannot parse sweep file {path}"):
        load_sweep(path)
    assert cli.main(["sweep", str(path), "--dry-run"]) == 2
    assert str(path) in one_error_line(capsys, "sweep")


# --- the command line's one place for user errors (7) ---------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        TrainingDivergedError("loss is nan at step 12 (epoch 1); lower optim.lr"),
        FloatingPointError("loss is nan"),
        ShiftlabError("a message\nquoting two lines"),
    ],
)
def test_a_user_error_reaching_the_cli_is_one_line(monkeypatch, capsys, error):
    def fails(argv):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "train", fails)
    assert cli.main(["train"]) == 2
    line = one_error_line(capsys, "train")
    assert line.endswith(" ".join(str(error).splitlines()))


def test_a_bug_keeps_its_traceback(monkeypatch):
    def fails(argv):
        raise KeyError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "train", fails)
    with pytest.raises(KeyError):
        cli.main(["train"])


def test_training_diverged_is_a_floating_point_error_and_a_user_error():
    assert issubclass(TrainingDivergedError, FloatingPointError)
    assert issubclass(TrainingDivergedError, ShiftlabError)
