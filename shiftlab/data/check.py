"""What ``shiftlab datasets`` reports: known datasets, their domains, and what is on disk under a root."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from .base import DataError, ImageListDataset, load_rgb
from .folder import class_difference
from .registry import DomainReport, get_dataset, list_datasets


def verify_images(dataset) -> list[str]:
    """Decode every file of an image-list dataset; one problem line per unreadable file."""
    if not isinstance(dataset, ImageListDataset):
        return []
    problems = []
    for path, _ in tqdm(dataset.samples, desc="decoding", leave=False):
        try:
            load_rgb(path)
        except DataError as err:
            problems.append(str(err))
    return problems


def check_datasets(root: Path, names: list[str] | None = None, *, verify: bool = False) -> list[dict]:
    specs = [get_dataset(n) for n in names] if names else list_datasets()
    reports = []
    for spec in specs:
        domains: list[DomainReport] = []
        for domain in spec.domains:
            report = spec.check(root, domain) if spec.check else DomainReport(domain, present=True)
            if verify and report.present and not report.problems:
                try:
                    report.problems += verify_images(spec.dataset(root, domain, "test"))
                except DataError as err:
                    report.problems.append(str(err))
            domains.append(report)
        present = [d for d in domains if d.present and d.classes]
        expected = list(spec.classes) or (present[0].classes if present else [])
        for d in present:
            if sorted(d.classes) != sorted(expected):
                d.problems.append(f"classes differ from the dataset's: {class_difference(expected, d.classes)}")
        reports.append({"dataset": spec.name, "description": spec.description, "embedded": spec.embedded,
                        "num_classes": len(expected), "on_disk": any(d.present for d in domains),
                        "domains": [asdict(d) for d in domains]})
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
            lines.append(f"  not on disk: {', '.join(d['domain'] for d in r['domains'])}"
                         + (f" ({first[0]})" if first else ""))
            continue
        for d in r["domains"]:
            if not d["present"]:
                status = "MISSING"
            else:
                status = f"{d['images']:>7} images" + ("" if not d["problems"] else f", {len(d['problems'])} problem(s)")
            lines.append(f"  {d['domain']:<14} {status}")
            for p in d["problems"][:20 if d["present"] else 1]:
                lines.append(f"      ! {p}")
            if len(d["problems"]) > 20:
                lines.append(f"      ! ... {len(d['problems']) - 20} more")
    return "\n".join(lines)
