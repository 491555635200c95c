"""The paper's Figure 2 for our classifier: accuracy against the colour rotation's angle (pure inference).

Hazan et al., "AdapterNet - learning input transformation for domain adaptation" (2018), Figure 2 plots
a fixed ImageNet classifier's top-1 accuracy as the CIELAB (a, b) rotation grows. This reads the run
folders of ``sweeps/adapternet_digits_angles.yaml`` (or any runs whose ``data.target`` ends in
``@colour_rotation(DEG)``), and writes ``angles.csv`` and ``angles.png`` (default: into the folder given).

    .venv/bin/python scripts/plot_adapternet_angles.py runs/sweeps/adapternet_digits_angles [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def angle_of(target: str) -> float | None:
    from shiftlab.data.shifts import parse_domain

    _, shifts = parse_domain(target)
    angles = [s.args[0] for s in shifts if s.shift.name == "colour_rotation"]
    return float(angles[-1]) if len(shifts) == 1 and angles else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="sweep folder or any folder of run folders")
    parser.add_argument("--out", default=None, help="output folder (default: the folder given)")
    parser.add_argument("--metric", default="target_acc", help="summary.json metric (default target_acc)")
    args = parser.parse_args(argv)
    from shiftlab.errors import ShiftlabError
    from shiftlab.report.runs import load_runs

    try:
        runs = load_runs(args.folder)
    except ShiftlabError as err:
        print(f"plot_adapternet_angles: error: {err}", file=sys.stderr)
        return 2
    by_angle: dict[float, list[float]] = defaultdict(list)
    for run in runs.finished:
        angle = angle_of(str(run.config.get("data.target", "")))
        if angle is not None:
            by_angle[angle].append(float(run.summary[args.metric]))
    if not by_angle:
        print(
            f"plot_adapternet_angles: error: no finished run under {args.folder} has a data.target "
            f"<domain>@colour_rotation(DEG)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out or args.folder)
    out.mkdir(parents=True, exist_ok=True)
    angles = sorted(by_angle)
    means = [float(np.mean(by_angle[a])) for a in angles]
    stds = [float(np.std(by_angle[a])) for a in angles]
    with open(out / "angles.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["degrees", f"{args.metric}_mean", f"{args.metric}_std", "runs"])
        for a, m, s in zip(angles, means, stds):
            writer.writerow([f"{a:g}", f"{m:.4f}", f"{s:.4f}", len(by_angle[a])])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.errorbar(angles, [100 * m for m in means], yerr=[100 * s for s in stds], marker="o", capsize=3)
    ax.set_xlabel("colour rotation in CIELAB (degrees)")
    ax.set_ylabel(f"{args.metric} (%)")
    ax.set_xticks(angles)
    ax.grid(alpha=0.3)
    ax.set_title("fixed classifier, pure inference (cf. Hazan et al. 2018, Fig. 2)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(out / "angles.png", dpi=120)
    print("\n".join(f"{a:g} deg: {m:.4f}" for a, m in zip(angles, means)))
    print(f"wrote {out / 'angles.csv'} and {out / 'angles.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
