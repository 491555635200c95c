"""AdapterNet's measure: the fraction of the clean accuracy each method recovers on a simulated camera.

Hazan et al., "AdapterNet - learning input transformation for domain adaptation" (2018), Table 1 and its
text: a method's top-1 accuracy on the camera's images over the fixed classifier's accuracy on the clean
images (0.964 for AdapterNet under colour rotation, 0.945 under the power function). This reads the
``table.csv`` that ``shiftlab report`` wrote for a sweep folder of ``sweeps/adapternet_*.yaml`` and divides
each seed's accuracy by the clean pure-inference accuracy (``method.name=source_only`` on the undistorted
domain, one deterministic run), then gives mean ± sample std over seeds; beside it, the paper's fraction
from the reference file. Writes ``fractions.md`` and ``fractions.csv`` into the report folder.

    shiftlab report runs/sweeps/adapternet_digits --reference docs/references/adapternet.yaml
    .venv/bin/python scripts/adapternet_fractions.py runs/sweeps/adapternet_digits/report --clean mnist_m
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

METHOD_ORDER = ["source_only", "finetune:1", "finetune:2", "finetune:3", "adapternet"]
LABELS = {
    "source_only": "pure inference",
    "finetune:1": "fine-tune last 1",
    "finetune:2": "fine-tune last 2",
    "finetune:3": "fine-tune last 3",
    "adapternet": "AdapterNet",
}


def _method(row: dict) -> str:
    layers = row.get("method.layers", "")
    return f"{row['method.name']}:{layers}" if row["method.name"] == "finetune" and layers else row["method.name"]


def _camera(target: str) -> str:
    return target.split("@", 1)[1] if "@" in target else "clean"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="a report folder holding table.csv (shiftlab report's output)")
    parser.add_argument("--clean", required=True, help="the undistorted target domain, e.g. mnist_m or photo")
    parser.add_argument(
        "--rule",
        default="target_val",
        help="selection rule whose rows to read (default target_val: the camera's validation part)",
    )
    args = parser.parse_args(argv)
    table = Path(args.report) / "table.csv"
    if not table.is_file():
        print(
            f"adapternet_fractions: error: {table} not found; run `shiftlab report` on the sweep folder first",
            file=sys.stderr,
        )
        return 2
    with open(table) as f:
        rows = list(csv.DictReader(f))
    ours = [r for r in rows if r["kind"] == "ours" and r["rule"] == args.rule]
    if not ours:
        rules = sorted({r["rule"] for r in rows if r["kind"] == "ours"})
        print(
            f"adapternet_fractions: error: no rows of rule '{args.rule}' in {table}; rules there: {rules}",
            file=sys.stderr,
        )
        return 2
    # pure inference trains nothing (one epoch-0 evaluation, no validation part to select on), so it is
    # taken from whichever rule reports it (`target_oracle` does): there is no choice for a rule to make
    keys = {(_method(r), r["data.target"]) for r in ours}
    for r in rows:
        if r["kind"] == "ours" and r["method.name"] == "source_only" and (_method(r), r["data.target"]) not in keys:
            ours.append(r)
            keys.add((_method(r), r["data.target"]))
    clean = [r for r in ours if r["method.name"] == "source_only" and r["data.target"] == args.clean]
    if not clean:
        print(
            f"adapternet_fractions: error: no pure-inference row (method.name=source_only) on "
            f"data.target={args.clean} in {table}",
            file=sys.stderr,
        )
        return 2
    clean_acc = float(clean[0]["mean_pct"])
    paper = {(_method(r), _camera(r["data.target"])): float(r["mean_pct"]) for r in rows if r["kind"] != "ours"}
    paper_clean = paper.get(("source_only", "clean"))

    cells, out = {}, []
    for r in ours:
        values = [float(v) / clean_acc for v in r["values_pct"].split(";") if v]
        key = (_method(r), _camera(r["data.target"]))
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        acc = statistics.fmean(float(v) for v in r["values_pct"].split(";") if v)
        pf = paper[key] / paper_clean if key in paper and paper_clean else float("nan")
        cells[key] = (acc, mean, std, len(values), pf)
        out.append(
            {
                "method": LABELS.get(key[0], key[0]),
                "camera": key[1],
                "accuracy_pct": f"{acc:.2f}",
                "fraction_mean": f"{mean:.3f}",
                "fraction_std": "" if std != std else f"{std:.3f}",
                "n": len(values),
                "paper_fraction": "" if pf != pf else f"{pf:.3f}",
            }
        )
    cameras = [c for c in ("clean", *sorted({k[1] for k in cells} - {"clean"})) if any(k[1] == c for k in cells)]
    methods = [m for m in METHOD_ORDER if any(k[0] == m for k in cells)]
    lines = [
        f"Fraction of the clean accuracy ({clean_acc:.2f}%, pure inference on `{args.clean}`) recovered, "
        f"mean ± std over seeds (n); selection rule `{args.rule}`; the paper's fraction (VGG16, ImageNet) "
        "in brackets.",
        "",
        "| method | " + " | ".join(cameras) + " |",
        "| --- |" + " --- |" * len(cameras),
    ]
    for m in methods:
        cell_text = []
        for c in cameras:
            if (m, c) not in cells:
                cell_text.append("")
                continue
            acc, mean, std, n, pf = cells[(m, c)]
            spread = "" if std != std else f" ± {std:.3f}"
            ref = "" if pf != pf else f" [{pf:.3f}]"
            cell_text.append(f"{acc:.2f}% = {mean:.3f}{spread} (n={n}){ref}")
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cell_text) + " |")
    (Path(args.report) / "fractions.md").write_text("\n".join(lines) + "\n")
    with open(Path(args.report) / "fractions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
