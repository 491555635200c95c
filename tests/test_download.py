"""Downloads, checksums and safe extraction, against a server on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # local_http sits beside this file
from local_http import serve_directory  # noqa: E402

from shiftlab.data import download as dl  # noqa: E402
from shiftlab.data.download import Resource, download_dataset, download_file, extract_archive  # noqa: E402
from shiftlab.errors import DataError, DownloadError  # noqa: E402

FILES = {"set/a.txt": b"alpha\n", "set/sub/b.bin": bytes(range(256)) * 40, "set/c.txt": b"gamma"}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """A proxy from the environment must not capture requests to 127.0.0.1."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256(path.read_bytes())


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz", extra=()) -> Path:
    """``extra``: TarInfo members added as they are (links, fifos, odd names)."""
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def everything(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------------
# download_file


def test_download_file_verifies_and_replaces(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    data = os.urandom(300_000)
    (served / "blob.bin").write_bytes(data)
    dest = tmp_path / "out" / "blob.bin"
    with serve_directory(served) as base:
        got = download_file(base + "blob.bin", dest, sha256=sha256(data), progress=False)
        assert got == dest and dest.read_bytes() == data
        assert not dest.with_name("blob.bin.part").exists()
        md5 = hashlib.md5(data).hexdigest()
        assert download_file(base + "blob.bin", tmp_path / "b2", md5=md5, progress=False).read_bytes() == data


def test_download_file_checksum_mismatch_leaves_nothing(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    (served / "blob.bin").write_bytes(b"actual content")
    dest = tmp_path / "out" / "blob.bin"
    wrong = "0" * 64
    with serve_directory(served) as base, pytest.raises(DownloadError) as info:
        download_file(base + "blob.bin", dest, sha256=wrong, progress=False)
    msg = str(info.value)
    assert base + "blob.bin" in msg and str(dest) in msg
    assert f"expected sha256 {wrong}" in msg and sha256(b"actual content") in msg
    assert isinstance(info.value, DataError)
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()


def test_download_file_truncated_transfer_leaves_nothing(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    data = os.urandom(50_000)
    (served / "big.zip").write_bytes(data)
    dest = tmp_path / "out" / "big.zip"
    with serve_directory(served, truncate={"big.zip": 100}) as base, pytest.raises(DownloadError) as info:
        download_file(base + "big.zip", dest, progress=False)  # no checksum: only Content-Length can tell
    assert "truncated" in str(info.value) and base + "big.zip" in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists() and not dest.with_name("big.zip.part").exists()


def test_download_file_http_error_names_url(tmp_path):
    (tmp_path / "www").mkdir()
    dest = tmp_path / "missing.bin"
    with serve_directory(tmp_path / "www") as base, pytest.raises(DownloadError) as info:
        download_file(base + "missing.bin", dest, progress=False)
    assert "404" in str(info.value) and base + "missing.bin" in str(info.value)
    assert not dest.exists() and not dest.with_name("missing.bin.part").exists()


def test_download_file_is_idempotent_and_repairs_bad_file(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    data = b"x" * 5000
    (served / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    with serve_directory(served) as base:
        download_file(base + "f.bin", dest, sha256=sha256(data), progress=False)
        download_file(base + "f.bin", dest, sha256=sha256(data), progress=False)
        assert base.hits["f.bin"] == 1  # the verified file was not fetched again
        dest.write_bytes(b"corrupt")
        download_file(base + "f.bin", dest, sha256=sha256(data), progress=False)
        assert base.hits["f.bin"] == 2 and dest.read_bytes() == data


def test_interrupt_removes_part_file(tmp_path, monkeypatch):
    served = tmp_path / "www"
    served.mkdir()
    (served / "f.bin").write_bytes(os.urandom(10_000))

    class Interrupting:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(dl, "tqdm", Interrupting)
    dest = tmp_path / "f.bin"
    with serve_directory(served) as base, pytest.raises(KeyboardInterrupt):
        download_file(base + "f.bin", dest)
    assert not dest.exists() and not dest.with_name("f.bin.part").exists()


# --------------------------------------------------------------------------------------------------
# extract_archive


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tgz", "tar.bz2", "tar"])
def test_extract_good_archives(tmp_path, kind):
    archive = tmp_path / f"good.{kind}"
    if kind == "zip":
        make_zip(archive, FILES)
    else:
        make_tar(archive, FILES, {"tar.gz": "w:gz", "tgz": "w:gz", "tar.bz2": "w:bz2", "tar": "w"}[kind])
    dest = tmp_path / "out"
    paths = extract_archive(archive, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in paths) == sorted(FILES)
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "out"])  # no temp folder left


def test_extract_good_archive_downloaded(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    archive = make_zip(served / "set.zip", FILES)
    with serve_directory(served) as base:
        got = download_file(base + "set.zip", tmp_path / "dl" / "set.zip", sha256=file_sha256(archive), progress=False)
    extract_archive(got, tmp_path / "data")
    assert everything(tmp_path / "data") == ["set", "set/a.txt", "set/c.txt", "set/sub", "set/sub/b.bin"]


def test_extract_into_existing_folder_merges_but_never_overwrites(tmp_path):
    dest = tmp_path / "out"
    (dest / "keep").mkdir(parents=True)
    extract_archive(make_zip(tmp_path / "a.zip", {"one/x.txt": b"1"}), dest)
    assert (dest / "one/x.txt").read_bytes() == b"1" and (dest / "keep").is_dir()
    with pytest.raises(DownloadError, match="overwrite"):
        extract_archive(make_zip(tmp_path / "b.zip", {"one/y.txt": b"2"}), dest)
    assert not (dest / "one/y.txt").exists()


def _bad_tar(path, bad_member, files=None):
    return make_tar(path, files if files is not None else {"good/first.txt": b"ok"}, extra=[bad_member])


BAD_ARCHIVES = {
    "zip-dotdot": (lambda p: make_zip(p / "evil.zip", {"good/first.txt": b"ok", "../evil.txt": b"x"}), "../evil.txt"),
    "zip-dotdot-deep": (lambda p: make_zip(p / "evil.zip", {"good/../../evil.txt": b"x"}), "good/../../evil.txt"),
    "zip-backslash": (lambda p: make_zip(p / "evil.zip", {"..\\evil.txt": b"x"}), "..\\evil.txt"),
    # zipfile would strip the leading "/" (or keep "C:" as a folder name) and unpack a renamed file
    "zip-absolute": (lambda p: make_zip(p / "evil.zip", {"good/first.txt": b"ok", "/evil.txt": b"x"}), "/evil.txt"),
    "zip-drive": (lambda p: make_zip(p / "evil.zip", {"C:/evil.txt": b"x"}), "C:/evil.txt"),
    "tar-dotdot": (
        lambda p: make_tar(p / "evil.tar.gz", {"good/first.txt": b"ok", "../evil.txt": b"x"}),
        "../evil.txt",
    ),
    # the member is the absolute path of <src>/evil.txt: the test fills it in
    "tar-absolute": (lambda p: make_tar(p / "evil.tar.gz", {"good/first.txt": b"ok", str(p / "evil.txt"): b"x"}), None),
    "tar-symlink-out": (lambda p: _bad_tar(p / "evil.tar.gz", link("good/escape", "../../evil.txt")), "good/escape"),
    "tar-symlink-abs": (lambda p: _bad_tar(p / "evil.tar.gz", link("good/passwd", "/etc/passwd")), "good/passwd"),
    "tar-hardlink-out": (
        lambda p: _bad_tar(p / "evil.tar.gz", link("good/h", "../evil.txt", tarfile.LNKTYPE)),
        "good/h",
    ),
    "tar-fifo": (lambda p: _bad_tar(p / "evil.tar.gz", link("good/pipe", "", tarfile.FIFOTYPE)), "good/pipe"),
    "tar-chardev": (lambda p: _bad_tar(p / "evil.tar.gz", link("good/dev", "", tarfile.CHRTYPE)), "good/dev"),
}


def _chained_symlinks(p):
    # Each link looks harmless on its own ("d/up" -> "..", "esc" -> "d/up/.."), but together "esc"
    # resolves above the root; a later file written through it would land outside.
    with tarfile.open(p / "evil.tar.gz", "w:gz") as tf:
        d = tarfile.TarInfo("d")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        tf.addfile(link("d/up", ".."))
        tf.addfile(link("esc", "d/up/.."))
    return p / "evil.tar.gz"


def _tar_link_then_file(p):
    with tarfile.open(p / "evil.tar", "w") as tf:
        tf.addfile(link("via", "../outside"))
        info = tarfile.TarInfo("via/evil.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    return p / "evil.tar"


BAD_ARCHIVES["tar-symlink-chain"] = (_chained_symlinks, "esc")
BAD_ARCHIVES["tar-write-through-symlink"] = (_tar_link_then_file, "via")


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_unsafe_archive_writes_nothing(tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    build, member = BAD_ARCHIVES[case]
    archive = build(src)
    if member is None:
        member = str(src / "evil.txt")
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "dest"
    with pytest.raises(DownloadError) as info:
        extract_archive(archive, dest)
    msg = str(info.value)
    assert str(archive) in msg and repr(member) in msg, msg
    assert not dest.exists()  # nothing inside
    assert everything(work) == []  # no temp folder either
    assert sorted(p.name for p in src.iterdir()) == [archive.name]  # nothing next to the archive
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "outside").exists()


def test_symlink_inside_archive_is_allowed(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", {"d/real.txt": b"r"}, extra=[link("d/alias", "real.txt")])
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    assert (dest / "d/alias").is_symlink() and (dest / "d/alias").read_bytes() == b"r"


def test_extract_rejects_non_archive(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive")
    with pytest.raises(DownloadError, match="junk.bin"):
        extract_archive(junk, tmp_path / "out")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DownloadError, match="broken.zip"):
        extract_archive(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# download_dataset


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """A served folder with a plain file and an archive, registered as dataset "fake"."""
    served = tmp_path / "www"
    served.mkdir()
    (served / "labels.txt").write_bytes(b"0 1 2\n")
    make_zip(
        served / "images.zip",
        {"upstream_top/dom1/cls/x.png": b"png1", "upstream_top/dom2/cls/y.png": b"png2", "README": b"ignored"},
    )
    root = tmp_path / "root"

    def register(base, **overrides):
        resources = [
            Resource(
                url=base + "labels.txt",
                filename="labels.txt",
                sha256=file_sha256(served / "labels.txt"),
                folder="Fake/raw",
            ),
            Resource(
                url=base + "images.zip",
                filename="images.zip",
                sha256=file_sha256(served / "images.zip"),
                extract_to="Fake",
                moves=(("upstream_top/dom1", "dom1"), ("upstream_top/dom2", "dom2")),
            ),
        ]
        resources = [dataclasses.replace(r, **overrides.get(r.filename, {})) for r in resources]
        monkeypatch.setitem(dl.SOURCES, "fake", resources)
        return resources

    return served, root, register


def test_download_dataset_layout_marker_and_idempotence(fake_source, monkeypatch):
    served, root, register = fake_source
    marker = root / ".shiftlab" / "fake.complete"
    real_download_file, real_extract = dl.download_file, dl.extract_archive
    calls = []

    def watched_download(*a, **k):
        assert not marker.exists(), "marker written before the last download"
        calls.append("download")
        return real_download_file(*a, **k)

    def watched_extract(*a, **k):
        assert not marker.exists(), "marker written before extraction"
        calls.append("extract")
        return real_extract(*a, **k)

    monkeypatch.setattr(dl, "download_file", watched_download)
    monkeypatch.setattr(dl, "extract_archive", watched_extract)
    with serve_directory(served) as base:
        register(base)
        assert download_dataset("fake", root, progress=False) == root
        assert calls == ["download", "download", "extract"]
        assert (root / "Fake/raw/labels.txt").read_bytes() == b"0 1 2\n"
        assert (root / "Fake/dom1/cls/x.png").read_bytes() == b"png1"
        assert (root / "Fake/dom2/cls/y.png").read_bytes() == b"png2"
        assert marker.is_file()
        content = json.loads(marker.read_text())
        assert content["dataset"] == "fake" and "Fake/dom1" in content["targets"]
        # archives and staging are cleaned up; the marker and the record of what was written stay
        assert everything(root / ".shiftlab") == ["fake.complete", "fake.state.json"]
        assert sorted(p.name for p in root.iterdir()) == [".shiftlab", "Fake"]
        hits = dict(base.hits)
        assert hits == {"labels.txt": 1, "images.zip": 1}
        calls.clear()
        download_dataset("fake", root, progress=False)
        assert dict(base.hits) == hits and calls == []  # second call: no request, no work

        # Without the marker, the plain file is re-verified locally and the unpacked archive is kept.
        marker.unlink()
        download_dataset("fake", root, progress=False)
        assert dict(base.hits) == hits and marker.is_file()

        # A missing domain folder is restored from a fresh download.
        import shutil

        shutil.rmtree(root / "Fake/dom2")
        download_dataset("fake", root, keep_archives=True, progress=False)
        assert (root / "Fake/dom2/cls/y.png").is_file() and base.hits["images.zip"] == 2
        assert (root / ".shiftlab/downloads/images.zip").is_file()


def test_marker_only_after_everything_succeeds(fake_source):
    served, root, register = fake_source
    marker = root / ".shiftlab" / "fake.complete"
    with serve_directory(served) as base:
        register(base, **{"images.zip": {"sha256": "f" * 64}})  # the last resource fails its checksum
        with pytest.raises(DownloadError, match="checksum mismatch"):
            download_dataset("fake", root, progress=False)
        assert not marker.exists()
        assert (root / "Fake/raw/labels.txt").exists()  # the first file is done and kept
        assert not (root / ".shiftlab/downloads/images.zip").exists()
        assert not (root / ".shiftlab/downloads/images.zip.part").exists()
        register(base)  # fixed: the rerun completes without fetching the verified first file again
        download_dataset("fake", root, progress=False)
        assert marker.is_file() and base.hits["labels.txt"] == 1
        assert (root / "Fake/dom2/cls/y.png").is_file()


def test_rerun_replaces_only_its_own_partial_folders(fake_source, monkeypatch):
    served, root, register = fake_source
    with serve_directory(served) as base:
        register(base)
        real_replace = os.replace
        moved = []

        def crash_after_first_move(src, dst):
            real_replace(src, dst)
            if "dom1" in str(dst) and "staging" not in str(dst):
                moved.append(dst)
                raise KeyboardInterrupt  # killed between the two moves

        monkeypatch.setattr(dl.os, "replace", crash_after_first_move)
        with pytest.raises(KeyboardInterrupt):
            download_dataset("fake", root, progress=False)
        monkeypatch.setattr(dl.os, "replace", real_replace)
        assert moved and (root / "Fake/dom1").is_dir() and not (root / ".shiftlab/fake.complete").exists()
        download_dataset("fake", root, progress=False)  # Fake/dom1 is ours (ledger): replaced, not refused
        assert (root / ".shiftlab/fake.complete").is_file() and (root / "Fake/dom2/cls/y.png").is_file()


def test_existing_foreign_folder_is_never_replaced(fake_source):
    served, root, register = fake_source
    (root / "Fake/dom1").mkdir(parents=True)
    (root / "Fake/dom1/mine.txt").write_text("user data")
    with serve_directory(served) as base:
        register(base)
        with pytest.raises(DownloadError, match="not written by shiftlab"):
            download_dataset("fake", root, progress=False)
        assert sum(base.hits.values()) == 0  # refused before any download
    assert (root / "Fake/dom1/mine.txt").read_text() == "user data"


def test_unverified_source_is_refused_unless_allowed(fake_source):
    served, root, register = fake_source
    good = file_sha256(served / "images.zip")
    with serve_directory(served) as base:
        register(base, **{"images.zip": {"sha256": None}})
        with pytest.raises(DownloadError) as info:
            download_dataset("fake", root, progress=False)
        msg = str(info.value)
        assert base + "images.zip" in msg and "checksum=" in msg and "verify=False" in msg
        assert sum(base.hits.values()) == 0 and not root.exists()  # refused before any network access

        with pytest.raises(DownloadError, match="checksum mismatch"):
            download_dataset("fake", root, checksum="sha256:" + "0" * 64, progress=False)
        assert not (root / ".shiftlab/fake.complete").exists()

        download_dataset("fake", root, checksum={"images.zip": f"sha256:{good}"}, progress=False)
        assert (root / "Fake/dom1/cls/x.png").is_file()

        other = root.parent / "root2"
        download_dataset("fake", other, verify=False, progress=False)
        assert (other / ".shiftlab/fake.complete").is_file() and (other / "Fake/dom2/cls/y.png").is_file()


def test_checksum_argument_errors(fake_source):
    served, root, register = fake_source
    with serve_directory(served) as base:
        register(base, **{"images.zip": {"sha256": None}})
        with pytest.raises(DownloadError, match="does not have"):
            download_dataset("fake", root, checksum={"nope.zip": "0" * 64}, progress=False)
        with pytest.raises(DownloadError, match="conflicts"):
            download_dataset("fake", root, checksum={"labels.txt": "1" * 64}, progress=False)
        with pytest.raises(DownloadError, match="cannot read checksum"):
            download_dataset("fake", root, checksum="sha1:abc", progress=False)
        assert sum(base.hits.values()) == 0


def test_mirrors_are_tried_in_order(tmp_path, monkeypatch):
    served = tmp_path / "www"
    served.mkdir()
    (served / "f.gz").write_bytes(b"payload")
    with serve_directory(served) as base:
        res = Resource(
            url=base + "gone/f.gz", mirrors=(base + "f.gz",), filename="f.gz", sha256=sha256(b"payload"), folder="M/raw"
        )
        monkeypatch.setitem(dl.SOURCES, "mirrored", [res])
        download_dataset("mirrored", tmp_path / "root", progress=False)
        assert base.hits["gone/f.gz"] == 1 and base.hits["f.gz"] == 1
        res = dataclasses.replace(res, mirrors=(base + "also-gone/f.gz",))
        monkeypatch.setitem(dl.SOURCES, "mirrored", [res])
        with pytest.raises(DownloadError) as info:
            download_dataset("mirrored", tmp_path / "root2", progress=False)
        assert "gone/f.gz" in str(info.value) and "also-gone/f.gz" in str(info.value)


def test_unknown_dataset_lists_downloadable_names(tmp_path):
    with pytest.raises(DownloadError) as info:
        download_dataset("pacz", tmp_path)
    msg = str(info.value)
    for name in dl.SOURCES:
        assert name in msg
    assert "Did you mean 'pacs'" in msg


def test_manual_resource_asks_for_the_file_then_uses_it(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "Hand.zip", {"top/d/c/i.png": b"i"})
    res = Resource(
        url="https://drive.google.com/uc?id=XYZ",
        filename="Hand.zip",
        sha256=file_sha256(archive),
        extract_to="",
        moves=(("top", "Hand"),),
        manual="Google Drive needs a browser",
    )
    monkeypatch.setitem(dl.SOURCES, "hand", [res])
    root = tmp_path / "root"
    with pytest.raises(DownloadError) as info:
        download_dataset("hand", root, progress=False)
    place = root / ".shiftlab/downloads/Hand.zip"
    assert "by hand" in str(info.value) and res.url in str(info.value) and str(place) in str(info.value)
    place.parent.mkdir(parents=True)
    place.write_bytes(b"not it")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_dataset("hand", root, progress=False)
    place.write_bytes(archive.read_bytes())
    download_dataset("hand", root, progress=False)
    assert (root / "Hand/d/c/i.png").read_bytes() == b"i" and place.is_file()  # hand-made file is kept


# --------------------------------------------------------------------------------------------------
# The real registry, against synthetic archives of the same layout (no network)


@pytest.mark.parametrize("name", sorted(dl.SOURCES))
def test_every_registered_source_installs_its_layout(name, tmp_path, monkeypatch):
    """Each real entry of SOURCES, served from 127.0.0.1 with synthetic files of the same names and
    archive layout, lands where its moves and folders say; a source without a published checksum
    and a file that must be downloaded by hand are both refused before any request."""
    served = tmp_path / "www"
    served.mkdir()
    root = tmp_path / "root"
    with serve_directory(served) as base:
        local = []
        for r in dl.SOURCES[name]:
            path = served / r.filename
            if r.extract_to is None:
                path.write_bytes(r.filename.encode())
            else:
                members = {f"{src}/cls/img.png": src.encode() for src, _ in r.moves} or {"top/cls/img.png": b"x"}
                (make_zip if r.filename.endswith(".zip") else make_tar)(path, members)
            pinned = {"sha256": file_sha256(path), "md5": None} if r.verified else {}
            local.append(dataclasses.replace(r, url=base + r.filename, mirrors=(), **pinned))
        monkeypatch.setitem(dl.SOURCES, name, local)
        if not all(r.verified for r in local):
            with pytest.raises(DownloadError, match="no published checksum"):
                download_dataset(name, root, progress=False)
        for r in local:
            if r.manual:
                with pytest.raises(DownloadError, match="by hand"):
                    download_dataset(name, root, verify=False, progress=False)
                dl.manual_path(r, root).parent.mkdir(parents=True, exist_ok=True)
                dl.manual_path(r, root).write_bytes((served / r.filename).read_bytes())
        assert sum(base.hits.values()) == 0
        download_dataset(name, root, verify=False, progress=False)
        assert dict(base.hits) == {r.filename: 1 for r in local if not r.manual}
    for r in local:
        if r.extract_to is None:
            assert (root / r.folder / r.filename).read_bytes() == r.filename.encode()
        for src, dst in r.moves:
            assert (root / r.extract_to / dst / "cls/img.png").read_bytes() == src.encode()
    assert dl.marker_path(name, root).is_file()


def test_digits_note_mentions_mnist_m(tmp_path, monkeypatch, caplog):
    served = tmp_path / "www"
    served.mkdir()
    (served / "x.gz").write_bytes(b"x")
    with serve_directory(served) as base:
        monkeypatch.setitem(
            dl.SOURCES,
            "digits",
            [Resource(url=base + "x.gz", filename="x.gz", sha256=sha256(b"x"), folder="MNIST/raw")],
        )
        with caplog.at_level(logging.WARNING, logger="shiftlab.data.download"):
            download_dataset("digits", tmp_path / "root", progress=False)
    assert "MNIST-M" in caplog.text and "by hand" in caplog.text


def test_office31_entry_produces_loader_layout(tmp_path, monkeypatch):
    served = tmp_path / "www"
    served.mkdir()
    files = {f"office31/{d}/images/back_pack/frame_0001.jpg": d.encode() for d in ("amazon", "dslr", "webcam")}
    files["office31/amazon_train.txt"] = b"list"
    archive = make_tar(served / "office31.tar.gz", files)
    with serve_directory(served) as base:
        (real,) = dl.SOURCES["office31"]
        monkeypatch.setitem(
            dl.SOURCES,
            "office31",
            [dataclasses.replace(real, url=base + "office31.tar.gz", md5=None, sha256=file_sha256(archive))],
        )
        download_dataset("office31", tmp_path / "root", progress=False)
    root = tmp_path / "root"
    for d in ("amazon", "dslr", "webcam"):
        assert (root / f"Office31/{d}/back_pack/frame_0001.jpg").read_bytes() == d.encode()
    assert sorted(p.name for p in (root / "Office31").iterdir()) == ["amazon", "dslr", "webcam"]


def test_pacs_entry_produces_loader_layout(tmp_path, monkeypatch):
    served = tmp_path / "www"
    served.mkdir()
    zip_files = {f"kfold/{d}/dog/pic_001.jpg": d.encode() for d in ("art_painting", "cartoon", "photo", "sketch")}
    archive = make_zip(tmp_path / "PACS.zip", zip_files)
    images, *splits = dl.SOURCES["pacs"]
    fake_splits = []
    for r in splits:
        body = f"{r.filename.split('_')[0]}/dog/pic_001.jpg 1\n".encode()
        (served / r.filename).write_bytes(body)
        fake_splits.append((r, body))
    root = tmp_path / "root"
    with serve_directory(served) as base:
        monkeypatch.setitem(
            dl.SOURCES,
            "pacs",
            [dataclasses.replace(images, md5=None, sha256=file_sha256(archive))]
            + [dataclasses.replace(r, url=base + r.filename, sha256=sha256(body)) for r, body in fake_splits],
        )
        with pytest.raises(DownloadError, match="by hand"):
            download_dataset("pacs", root, progress=False)
        assert sum(base.hits.values()) == 0  # the missing zip is reported before anything is fetched
        (root / ".shiftlab/downloads").mkdir(parents=True)
        (root / ".shiftlab/downloads/PACS.zip").write_bytes(archive.read_bytes())
        download_dataset("pacs", root, progress=False)
    assert (root / "PACS/sketch/dog/pic_001.jpg").read_bytes() == b"sketch"
    assert len(list((root / "PACS/splits").glob("*_kfold.txt"))) == 12
    assert (root / ".shiftlab/pacs.complete").is_file()
