"""Command line: ``shiftlab train | sweep | report | datasets | download | adapt-images | predict | export | demo``,
``--version``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from .config import build_config, describe
from .errors import ShiftlabError

EXAMPLES = """\
examples:
  shiftlab train                                  # the embedded demo: digits -> digits on photos
  shiftlab train --config configs/ash/art_to_cartoon.yaml --data.root=/data --experiment.name=baseline/cartoon
  shiftlab train --config configs/demo.yaml --train.epochs=3 --method.name=adabn
  shiftlab train --config configs/demo.yaml --resume   # continue an interrupted run
"""


def _train_help() -> str:
    from .methods import METHODS

    lines = ["config keys (set in YAML or as --section.key=value; later sources win):"]
    for key, default, text in describe():
        lines.append(f"  --{key}  (default: {default})")
        lines += textwrap.wrap(text, width=92, initial_indent="      ", subsequent_indent="      ")
    lines.append("\nmethods (--method.name) and their own keys:")
    for name in sorted(METHODS):
        cls = METHODS[name]
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name}: {doc}")
        for pname, field in cls.Params.model_fields.items():
            default = field.get_default(call_default_factory=True)
            lines.append(f"      --method.{pname}  (default: {default})  {field.description or ''}")
    return "\n".join(lines) + "\n\n" + EXAMPLES


def cmd_train(argv: list[str]) -> int:
    from .engine.loop import Trainer

    parser = argparse.ArgumentParser(
        prog="shiftlab train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one method on one source -> target pair and write runs/<experiment.name>/.",
        epilog=_train_help(),
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config (repeatable; later files override earlier ones), or the name of a config "
        "shipped with shiftlab (e.g. demo, dann/mnist_to_mnist_m)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in runs/<experiment.name> from its last checkpoint, with its saved "
        "config (what this command line sets again still wins)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    args, overrides = parser.parse_known_args(argv)
    trainer = None
    try:
        cfg = build_config(args.config, overrides, resume=args.resume)
        trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
        summary = trainer.fit()
    except KeyboardInterrupt:
        where = (
            f"are saved in {trainer.run_dir}; continue with the same command and --resume" if trainer else "were none"
        )
        print(f"\nshiftlab train: interrupted. Completed epochs {where}.", file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.dist.close()
    if not trainer.dist.is_main:  # under torchrun, rank 0 speaks for the run
        return 0
    sel = summary["selections"][summary["selection"]]
    print(
        f"{summary['experiment']}: target accuracy {summary['target_acc']:.4f} "
        f"(selection: {summary['selection']}, epoch {sel['epoch']}); "
        f"final {summary['final_target_acc']:.4f}; {summary['train_images_per_s']} train images/s; "
        f"run folder {trainer.run_dir}"
    )
    return 0


def cmd_demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="shiftlab demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The README's demo, from any folder: `shiftlab train --config demo --overwrite` (the shipped "
        "configs/demo.yaml: source-only, scikit-learn's digits -> the same digits on photos, no download), "
        "writing runs/demo/source_only/. Any `shiftlab train` option or --section.key=value override "
        "may follow.",
        epilog="examples:\n  shiftlab demo\n  shiftlab demo --train.epochs=1 --method.name=adabn",
    )
    parser.parse_known_args(argv)  # --help
    return cmd_train(["--config", "demo", "--overwrite", *argv])


def cmd_datasets(argv: list[str]) -> int:
    from .data.cache import data_root
    from .data.check import check_datasets, format_report, has_problems
    from .data.shifts import format_shifts

    parser = argparse.ArgumentParser(
        prog="shiftlab datasets",
        description="List the known datasets and their domains, and check what is on disk under a root: "
        "missing domains, class sets that differ between domains, empty or unreadable files. "
        "Also lists the shifts that derive a domain of any dataset (<domain>@<shift>(args)).",
    )
    parser.add_argument("--root", default=None, help="data root (default: $SHIFTLAB_DATA, else ./data)")
    parser.add_argument(
        "--dataset",
        action="append",
        default=None,
        metavar="NAME",
        help="check only this dataset (repeatable), a registered name or folder:<Dataset> as "
        "`shiftlab train --data.dataset` takes it; default: all registered ones",
    )
    parser.add_argument(
        "--verify", action="store_true", help="decode every image to find unreadable files (slow on large datasets)"
    )
    parser.epilog = (
        "exit status: 0 when every dataset found on disk is complete, 1 when one on disk has "
        "problems (datasets not on disk at all count only when named with --dataset), 2 on bad arguments"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON (datasets only)")
    args = parser.parse_args(argv)
    root = data_root(args.root)
    reports = check_datasets(root, args.dataset, verify=args.verify)
    named = bool(args.dataset)
    print(
        json.dumps(reports, indent=2) if args.json else format_report(reports, root, named) + "\n\n" + format_shifts()
    )
    return 1 if has_problems(reports, named) else 0


def cmd_download(argv: list[str]) -> int:
    from .data.cache import data_root
    from .data.download import DOWNLOADABLE, download_dataset

    parser = argparse.ArgumentParser(
        prog="shiftlab download",
        description="Download a dataset with a public source into the data root, verify its checksum and "
        "extract it safely into the layout the loaders read.",
    )
    parser.add_argument("name", help=f"dataset to download: {', '.join(DOWNLOADABLE)}")
    parser.add_argument("--root", default=None, help="data root (default: $SHIFTLAB_DATA, else ./data)")
    parser.add_argument(
        "--checksum",
        default=None,
        help="expected checksum ('sha256:<hex>' or 'md5:<hex>') of the file of a source that has no published checksum",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="accept a source whose checksum is unknown (not recommended)"
    )
    args = parser.parse_args(argv)
    path = download_dataset(args.name, data_root(args.root), verify=not args.no_verify, checksum=args.checksum)
    print(f"{args.name}: ready under {path}")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    from .sweep import spec as sweep_spec

    parser = argparse.ArgumentParser(
        prog="shiftlab sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every trial of a sweep file on Ray Tune, each through the same Trainer as `shiftlab "
        "train`, in <output_dir>/<name>/runs/<trial>/. Re-running the same command skips finished "
        "trials and resumes unfinished ones from their checkpoints; a failed trial is reported and "
        "does not stop the others (exit status 1 if any failed).",
        epilog="sweep file keys:\n"
        + textwrap.indent(sweep_spec.__doc__.split("::", 1)[1].split("Every trial")[0], "")
        + "then: shiftlab report <output_dir>/<name>",
    )
    parser.add_argument(
        "file",
        help="sweep YAML (e.g. sweeps/demo_methods.yaml), or the name of a sweep shipped "
        "with shiftlab (e.g. demo_methods)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="join an existing Ray cluster (e.g. 'auto' or 'ray://head:10001'); default: start Ray on this machine",
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs local Ray may use (default: all)")
    parser.add_argument("--num-gpus", type=int, default=None, help="GPUs local Ray may use (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and their run folders; run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar of trials")
    args = parser.parse_args(argv)
    spec = sweep_spec.load_sweep(args.file)
    if args.dry_run:
        trials = (
            sweep_spec.grid_trials(spec)
            if spec.search and spec.search.algorithm == "optuna"
            else sweep_spec.expand(spec)
        )
        missing = sweep_spec.missing_weights(trials)
        for t in trials:
            mark = f"\t(model.weights not found: {missing[t.name]})" if t.name in missing else ""
            print(f"{t.name}\t{Path(t.config['experiment']['output_dir']) / t.name}{mark}")
        extra = (
            f" x {spec.search.num_samples} Optuna samples each"
            if spec.search and spec.search.algorithm == "optuna"
            else ""
        )
        print(f"{len(trials)} trials{extra}; sweep folder {sweep_spec.sweep_dir(spec)}")
        return 0
    from .sweep.runner import outcome_line, run_sweep

    result = run_sweep(
        spec, address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus, progress=not args.no_progress
    )
    print(outcome_line(spec.name, result))
    return 1 if result["failed"] else 0


def cmd_report(argv: list[str]) -> int:
    from .errors import ReportError
    from .report.cli import add_arguments, run
    from .utils import read_yaml_mapping

    parser = argparse.ArgumentParser(
        prog="shiftlab report",
        description="Turn the run folders under a sweep or runs folder into Markdown and CSV tables (mean ± std "
        "over seeds, the model-selection rule named) and PNG plots.",
    )
    add_arguments(parser)
    sweep_file = Path(parser.parse_known_args(argv)[0].folder) / "sweep.yaml"
    if sweep_file.is_file():  # the sweep's own `report:` defaults, if it has any
        defaults = read_yaml_mapping(sweep_file, "sweep file", ReportError).get("report") or {}
        if not isinstance(defaults, dict):
            raise ReportError(
                f"sweep file {sweep_file}: 'report' must be a mapping of report options, got {defaults!r}"
            )
        known = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    return run(parser.parse_args(argv))


def cmd_adapt_images(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="shiftlab adapt-images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Apply the adapter of a trained AdapterNet run (--method.name=adapternet) alone to images, "
        "at their own resolution, and write the adapted PNGs and a grid PNG (original / simulated "
        "camera / after the adapter, as in Figures 3, 4 and 6 of Hazan et al. 2018).",
        epilog="examples:\n"
        "  shiftlab adapt-images --adapter runs/adapternet/digits/adapternet --images "
        "'mnist_m@colour_rotation(150)' --out runs/adapted/colour_rotation\n"
        "  shiftlab adapt-images --adapter runs/adapternet/digits/adapternet/adapter.pt --images my_camera_pngs/ "
        "--out runs/adapted/mine --limit 20",
    )
    parser.add_argument(
        "--adapter",
        required=True,
        metavar="RUN",
        help="run folder of a finished adapternet run (its adapter.pt, written at the end of "
        "training from checkpoints/best.pt; exported now if missing) or an adapter.pt file",
    )
    parser.add_argument(
        "--images",
        required=True,
        metavar="DIR_OR_DOMAIN",
        help="a folder of images (searched recursively; grid rows: input / adapted), or a domain "
        "of the run's dataset such as 'mnist_m@colour_rotation(150)' or 'photo@power(0.2,0.3,0.4)' "
        "(quote the parentheses in a shell; grid rows: original base-domain image / simulated "
        "camera / adapted)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: adapted/*.png (for a domain also original/ and camera/) and grid.png",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=8,
        metavar="N",
        help="how many images to adapt (a domain's are evenly spaced over its split; a folder's "
        "are the first N in sorted order); default 8",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="split of the domain to read (default: test, which no method trains on)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="dataset of --images when it is a domain (default: the adapter run's data.dataset)",
    )
    parser.add_argument(
        "--root",
        default=None,
        help="data root (default: the adapter run's data.root, else $SHIFTLAB_DATA, else ./data)",
    )
    parser.add_argument("--cell", type=int, default=96, help="pixels per image in grid.png (default 96)")
    parser.add_argument("--grid-columns", type=int, default=8, help="images per row of grid.png (default 8)")
    args = parser.parse_args(argv)
    from .adapt_images import adapt_images

    written = adapt_images(
        args.adapter,
        args.images,
        args.out,
        limit=args.limit,
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        cell=args.cell,
        grid_columns=args.grid_columns,
    )
    print(
        f"{len(written['adapted'])} adapted image(s) in {Path(args.out) / 'adapted'}; grid {written['grid']} "
        f"(adapter {written['adapter']})"
    )
    return 0


def one_line(err: BaseException) -> str:
    """An error's message on one line (a message quoting a file's several lines stays readable)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def cmd_predict(argv: list[str]) -> int:
    from .inference import predict_command

    return predict_command(argv)


def cmd_export(argv: list[str]) -> int:
    from .export import export_command

    return export_command(argv)


COMMANDS = {
    "train": cmd_train,
    "datasets": cmd_datasets,
    "download": cmd_download,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "adapt-images": cmd_adapt_images,
    "predict": cmd_predict,
    "export": cmd_export,
}
COMMANDS["demo"] = cmd_demo


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] in (["--version"], ["-V"]):
        from . import __version__

        print(f"shiftlab {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(
            "usage: shiftlab {train,sweep,report,datasets,download,adapt-images,predict,export,demo} [options]   (shiftlab <command> --help)\n\n"
            "  train     train a method on a source -> target pair; writes runs/<experiment.name>/\n"
            "  sweep     run a grid / random / Optuna sweep of trainings on Ray Tune (sweeps/*.yaml)\n"
            "  report    tables (Markdown, CSV) and plots (PNG) from a sweep's or any run folders\n"
            "  datasets  list known datasets and domains; check what is on disk\n"
            "  download  download a dataset with a public source, verified and safely extracted\n"
            "  adapt-images  apply a trained AdapterNet to images (a folder or a simulated camera); PNGs + grid\n"
            "  predict   classify images (a folder, or a domain: with accuracy) with a trained run's model; CSV\n"
            "  export    a trained run's model as one ONNX or TorchScript graph, images -> logits\n"
            "  demo      the README's demo: train the shipped demo config (shiftlab train --config demo)\n\n"
            "  --version  print shiftlab's version"
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nshiftlab: error: unknown command '{argv[0]}'", file=sys.stderr)
            return 2
        return 0
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ShiftlabError, FloatingPointError) as err:  # user errors (a diverged run too): one line, no traceback
        print(f"shiftlab {argv[0]}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left early (`shiftlab sweep --dry-run | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 141  # 128 + SIGPIPE, as a shell tool would


if __name__ == "__main__":
    sys.exit(main())
