"""What ``shiftlab datasets`` reports: known datasets, their domains, and what is on disk under a root."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torch.utils.data import ConcatDataset
from tqdm.auto import tqdm

from ..errors import DataError
from .base import SPLITS, load_rgb
from .folder import class_difference
from .registry import get_dataset, list_datasets
from .spec import DatasetSpec, DomainReport
from .splits import per_sample


def verify_images(dataset) -> list[str]:
    """Decode every image file of a dataset; one problem line per unreadable file (in-memory images: none)."""
    problems = []
    paths = sorted({p for p in per_sample(dataset, "paths") if p is not None})
    for path in tqdm(paths, desc="decoding", leave=False):
        try:
            load_rgb(path)
        except DataError as err:
            problems.append(str(err))
    return problems


def _verify_domain(spec: DatasetSpec, root: Path, domain: str) -> list[str]:
    """Decode the files of every split of one domain (digits' train and test are different files)."""
    try:
        return verify_images(ConcatDataset([spec.dataset(root, domain, split) for split in SPLITS]))
    except DataError as err:
        return [str(err)]


def compare_classes(spec: DatasetSpec, domains: list[DomainReport]) -> int:
    """Add each domain's class differences to its report; returns the dataset's class count.

    A class outside a registered list is a problem (the loader refuses it). A domain lacking classes is a
    problem for a dataset with a published class list (an incomplete copy), and a note where the classes
    are the union of the domains' (training pairs only two domains and warns about the target's gaps).
    """
    present = [d for d in domains if d.present and d.classes]
    expected = list(spec.classes) or sorted({c for d in present for c in d.classes})
    for d in present:
        missing = sorted(set(expected) - set(d.classes))
        extra = sorted(set(d.classes) - set(expected))
        if extra:
            d.problems.append(f"classes differ from the dataset's: {class_difference(expected, d.classes)}")
        elif missing and spec.union_classes:
            d.notes.append(
                f"no images of {len(missing)} of the dataset's {len(expected)} classes: "
                f"{class_difference(expected, d.classes)}"
            )
        elif missing:
            d.problems.append(f"classes differ from the dataset's: {class_difference(expected, d.classes)}")
    return len(expected)


def check_datasets(root: Path, names: list[str] | None = None, *, verify: bool = False) -> list[dict]:
    """One report per dataset (all registered ones, or ``names``, which may be ``folder:<Dataset>``)."""
    specs = [get_dataset(n, root) for n in names] if names else list_datasets()
    reports = []
    for spec in specs:
        domains: list[DomainReport] = []
        for domain in spec.domains:
            report = spec.check(root, domain) if spec.check else DomainReport(domain, present=True)
            if verify and report.present and not report.problems:
                report.problems += _verify_domain(spec, root, domain)
            domains.append(report)
        num_classes = compare_classes(spec, domains)
        reports.append(
            {
                "dataset": spec.name,
                "description": spec.description,
                "embedded": spec.embedded,
                "num_classes": num_classes,
                "on_disk": any(d.present for d in domains),
                "target_adapt_split": spec.target_adapt_split,
                "target_eval_split": spec.target_eval_split,
                "domains": [asdict(d) for d in domains],
            }
        )
    return reports


def has_problems(reports: list[dict], named: bool = False) -> bool:
    """Problems in a dataset on disk, or in one the user named; one never downloaded is otherwise no problem."""
    return any(p for r in reports if r["on_disk"] or named for d in r["domains"] for p in d["problems"])


def format_report(reports: list[dict], root: Path, named: bool = False) -> str:
    """Text report; datasets with nothing on disk take one line unless the user named them."""
    lines = [f"data root: {root}" + ("" if root.is_dir() else "  (does not exist)")]
    for r in reports:
        classes = r["num_classes"] or "?"
        lines.append(f"\n{r['dataset']} ({classes} classes) - {r['description']}")
        if not r["on_disk"] and not named:
            first = r["domains"][0]["problems"][:1] if r["domains"] else []
            lines.append(
                f"  not on disk: {', '.join(d['domain'] for d in r['domains'])}" + (f" ({first[0]})" if first else "")
            )
            continue
        lines.append(
            f"  (target protocol: adapt on '{r['target_adapt_split']}', evaluate on '{r['target_eval_split']}')"
        )
        for d in r["domains"]:
            if not d["present"]:
                status = "MISSING"
            else:
                status = f"{d['images']:>7} images" + (
                    "" if not d["problems"] else f", {len(d['problems'])} problem(s)"
                )
            lines.append(f"  {d['domain']:<14} {status}")
            for p in d["problems"][: 20 if d["present"] else 1]:
                lines.append(f"      ! {p}")
            if len(d["problems"]) > 20:
                lines.append(f"      ! ... {len(d['problems']) - 20} more")
            for note in d.get("notes", []):
                lines.append(f"      note: {note}")
    return "\n".join(lines)
