"""Installing with pip: the version, shipped configs and sweeps by name, optional extras kept out of the
core import path, a built wheel that works in a fresh environment away from the repository, and the
documentation site's generated CLI reference."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shiftlab
from shiftlab import resources
from shiftlab.cli import COMMANDS, main
from shiftlab.config import ConfigError, build_config, read_yaml
from shiftlab.errors import MissingExtraError, ShiftlabError
from shiftlab.sweep.spec import SweepError, load_sweep

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("ray", "optuna", "matplotlib", "onnx", "onnxruntime")
# a tiny demo run: a few images, no progress bars, no validators
TINY = ["--train.epochs=1", "--data.limit=64", "--train.progress=false", "--train.validators=[]"]


def _env(**extra: str) -> dict[str, str]:
    """The environment of a child process that imports the repository's shiftlab (and nothing else's)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


# ----------------------------------------------------------------------------------------- version, metadata


def test_one_version_string_read_by_pyproject_and_the_cli(capsys):
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "shiftlab.__version__"}' in pyproject
    assert not re.search(r"^version\s*=\s*\"", pyproject, re.M)  # no second copy
    assert re.fullmatch(r"\d+\.\d+\.\d+", shiftlab.__version__)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"shiftlab {shiftlab.__version__}"
    assert f"## {shiftlab.__version__}" in (REPO / "CHANGELOG.md").read_text()  # this release's entry
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "the shiftlab authors" in licence
    assert 'license = "MIT"' in pyproject
    assert (REPO / "shiftlab" / "py.typed").is_file()


@pytest.mark.slow  # a child process importing torch: a few seconds on busy cores
def test_python_dash_m_shiftlab_is_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "shiftlab", "--version"],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"shiftlab {shiftlab.__version__}"


def test_metadata_ranges_and_extras():
    """torch by range (the exact pin stays in scripts/setup.sh), and Ray, Optuna, matplotlib only in extras."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "torch>=2.2,<3" in project["dependencies"] and "==" not in core
    for name in ("ray", "optuna", "matplotlib", "onnx", "mkdocs"):
        assert name not in core
    extras = project["optional-dependencies"]
    assert {"sweep", "report", "onnx", "docs", "all", "dev"} <= set(extras)
    assert any(d.startswith("ray[tune]") for d in extras["sweep"]) and any("optuna" in d for d in extras["sweep"])
    assert any("matplotlib" in d for d in extras["report"])
    assert "shiftlab[sweep,report,onnx,docs,timm]" in extras["all"] and "shiftlab[all]" in extras["dev"]
    assert "torch==2.14.1" in (REPO / "scripts" / "setup.sh").read_text()


# ------------------------------------------------------------------------------------ shipped configs, sweeps


def test_every_shipped_config_and_sweep_by_name_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the repository's relative paths do not exist here
    configs = resources.shipped_names("configs")
    assert "demo" in configs and "dann/mnist_to_mnist_m" in configs
    assert len(configs) == len(list((REPO / "configs").rglob("*.yaml")))
    for name in configs:  # base: chains included (ash/, dann/, activation_matching/ -> ../ash/)
        assert read_yaml(name) == read_yaml(REPO / "configs" / f"{name}.yaml"), name
        assert read_yaml(f"configs/{name}.yaml") == read_yaml(name)  # as the repository spells it
    sweeps = resources.shipped_names("sweeps")
    assert "demo_methods" in sweeps and len(sweeps) == len(list((REPO / "sweeps").glob("*.yaml")))
    for name in sweeps:
        spec = load_sweep(name)
        assert spec == load_sweep(REPO / "sweeps" / f"{name}.yaml")
        for config in spec.config:  # a sweep's `config: [configs/...]` resolves away from the repository
            assert resources.find("configs", config).is_file(), (name, config)
    cfg = build_config(["dann/mnist_to_mnist_m"], ["--train.epochs=2"])
    assert cfg.method.name == "dann" and cfg.data.target == "mnist_m" and cfg.train.epochs == 2


def test_a_path_that_exists_wins_and_a_users_base_may_name_a_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # a folder is not a config file: the name still means the shipped one
    assert read_yaml("demo")["data"]["dataset"] == "demo"
    (tmp_path / "demo.yaml").write_text("train: {epochs: 3}\n")
    assert read_yaml("demo.yaml") == {"train": {"epochs": 3}}  # the file here wins
    (tmp_path / "mine.yaml").write_text("base: dann/mnist_to_usps\ntrain: {epochs: 1}\n")
    tree = read_yaml("mine.yaml")
    assert tree["data"]["target"] == "usps" and tree["train"]["epochs"] == 1 and tree["method"]["name"] == "dann"


def test_unknown_names_are_one_line_errors_with_a_suggestion(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config file not found: mnist_to_usps .*Did you mean 'dann/mnist_to_usps'"):
        read_yaml("mnist_to_usps")
    with pytest.raises(SweepError, match=r"sweep file not found: demo_method .*Did you mean 'demo_methods'"):
        load_sweep("demo_method")
    for name in ("../configs/demo", "/nonexistent/demo.yaml"):  # never outside the shipped folder
        assert resources.shipped("configs", name) is None
    assert main(["train", "--config", "dann/mnist_to_mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("shiftlab train: error: config file not found")
    assert "dann/mnist_to_mnist_m" in err


# --------------------------------------------------------------------------------------- optional extras

# Run in a child process: the optional packages are made unimportable there, as if not installed.
_WITHOUT_EXTRAS = """
import sys
for name in {optional!r}:
    sys.modules[name] = None  # `import ray` now fails as if ray were not installed
from shiftlab.cli import main
"""


def _run_without_extras(code: str, cwd: Path) -> subprocess.CompletedProcess:
    script = _WITHOUT_EXTRAS.format(optional=OPTIONAL) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        env=_env(SHIFTLAB_CACHE=str(cwd / "cache")),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # a child process importing every core module
def test_the_core_import_path_imports_no_optional_package():
    code = (
        "import sys, shiftlab, shiftlab.cli, shiftlab.config, shiftlab.engine.loop, shiftlab.methods, "
        "shiftlab.data.registry, shiftlab.sweep.spec, shiftlab.report.cli, shiftlab.resources\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_train_datasets_and_dry_run_work_without_extras_and_sweep_report_name_theirs(tmp_path):
    out = _run_without_extras(
        f"""
        import json
        assert main(["demo", *{TINY!r}]) == 0
        assert main(["datasets", "--root", "data", "--dataset", "demo"]) == 0
        assert main(["sweep", "demo_methods", "--dry-run"]) == 0
        print("SWEEP", main(["sweep", "demo_methods", "--no-progress"]))
        print("REPORT", main(["report", "runs"]))
        print("NOPLOTS", main(["report", "runs", "--no-plots"]))
        print("LOADED", sorted(m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] in {OPTIONAL!r}))
    """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SWEEP 2" in out.stdout and "REPORT 2" in out.stdout and "NOPLOTS 0" in out.stdout
    assert "LOADED []" in out.stdout
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert errors[0].startswith('shiftlab sweep: error: shiftlab sweep needs Ray Tune: pip install "shiftlab[sweep]"')
    assert errors[1].startswith(
        "shiftlab report: error: shiftlab report's plots need matplotlib: pip install "
        '"shiftlab[report]" (or --no-plots: tables only)'
    )
    assert not (tmp_path / "runs" / "sweeps" / "demo_methods").exists()  # refused before anything was written
    assert (tmp_path / "runs" / "demo" / "source_only" / "summary.json").is_file()


def test_require_names_the_extra():
    from shiftlab.extras import require

    require("json", "never shown", "sweep")
    with pytest.raises(MissingExtraError, match=r'^x needs y: pip install "shiftlab\[report\]" \(cannot import') as err:
        require("shiftlab_no_such_module", "x needs y", "report")
    assert isinstance(err.value, ShiftlabError) and isinstance(err.value, ImportError)


# ------------------------------------------------------------------------------------- the wheel, installed


def _venv_site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@pytest.mark.slow
def test_the_wheel_installs_a_working_command_away_from_the_repository(tmp_path):
    """Build the wheel from the repository's files, install it offline into a fresh environment that sees
    this environment's packages (torch ...) but not the repository, and use it from another folder."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the repository's git checkout to list its files")
    src = tmp_path / "src"  # a copy of the tracked (and new, unignored) files: builds leave the checkout alone
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-w",
            str(dist),
            str(src),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = dist.glob("shiftlab-*.whl")
    assert wheel.name.startswith(f"shiftlab-{shiftlab.__version__}-")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # this environment's packages (torch, pip ...) after the new one's own; the repository is not among them
    theirs = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (_venv_site_packages(venv) / "_outer_site.pth").write_text("\n".join(theirs) + "\n")
    python, command = venv / "bin" / "python", venv / "bin" / "shiftlab"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", SHIFTLAB_CACHE=str(tmp_path / "cache"))
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--disable-pip-version-check",
            str(wheel),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*argv: str) -> str:
        out = subprocess.run(list(argv), cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{argv}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
        return out.stdout

    where = run(
        str(python),
        "-c",
        "import shiftlab, shiftlab.resources as r; from shiftlab.config import build_config; "
        "c = build_config(['dann/mnist_to_mnist_m']); "  # a base: chain inside the packaged configs
        "print(shiftlab.__file__, r.shipped_dir('configs'), c.method.name, c.data.target)",
    )
    module, configs, method, target = where.split()
    assert Path(module).is_relative_to(venv) and Path(configs) == Path(module).parent / "_data" / "configs"
    assert (method, target) == ("dann", "mnist_m")
    assert run(str(command), "--version").strip() == f"shiftlab {shiftlab.__version__}"
    assert "demo/source_only: target accuracy" in run(str(command), "demo", *TINY)
    assert (work / "runs" / "demo" / "source_only" / "summary.json").is_file()
    run(str(command), "train", "--config", "demo", "--experiment.name=again", *TINY)
    assert (work / "runs" / "again" / "summary.json").is_file()
    assert "9 trials" in run(str(command), "sweep", "demo_methods", "--dry-run")
    # using the trained model from the installed command: predict on the run's target, export to ONNX, run it
    demo = json.loads((work / "runs" / "demo" / "source_only" / "summary.json").read_text())
    run(str(command), "predict", "--run", "runs/demo/source_only", "--images", "target", "--out", "preds.csv")
    with open(work / "preds.csv") as f:
        assert len(list(csv.DictReader(f))) == demo["splits"]["target_eval"]["size"]
    run(str(command), "export", "--run", "runs/demo/source_only", "--format", "onnx", "--out", "model.onnx")
    logits = run(
        str(python),
        "-c",
        "import numpy as np, onnxruntime as ort; s = ort.InferenceSession('model.onnx'); "
        "x = np.zeros((3, 3, 32, 32), np.uint8); print(*s.run(None, {s.get_inputs()[0].name: x})[0].shape)",
    )
    assert logits.split() == ["3", "10"]  # a dynamic batch of 3 uint8 images -> 10 class logits


# --------------------------------------------------------------------------------------- documentation


def test_the_cli_reference_page_covers_every_command():
    from shiftlab.cli_reference import render

    page = render()
    for name in COMMANDS:
        assert f"## shiftlab {name}\n" in page
        assert f"usage: shiftlab {name} " in page, name
    assert "--method.lambda_" in page  # train's keys, methods' keys included
    assert "mkdocs_hooks.py" in (REPO / "mkdocs.yml").read_text()


@pytest.mark.slow
def test_the_documentation_site_builds_strictly(tmp_path):
    pytest.importorskip("material", reason="the docs extra (pip install 'shiftlab[docs]') is not installed")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=_env(NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "usage: shiftlab train" in (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "training_step" in (tmp_path / "site" / "api" / "methods" / "index.html").read_text()
