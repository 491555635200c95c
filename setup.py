"""Build step beside pyproject.toml (which holds all the metadata): the wheel carries the repository's
configs/ and sweeps/ as package data, shiftlab/_data/{configs,sweeps}, so `shiftlab train --config
dann/mnist_to_mnist_m` and `shiftlab sweep demo_methods` work from an installed wheel (shiftlab/resources.py
finds them). The repository keeps one copy of each file; an editable install reads them in place."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("configs", "sweeps")


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the repository's folders
            return
        for kind in SHIPPED:
            target = Path(self.build_lib) / "shiftlab" / "_data" / kind
            shutil.rmtree(target, ignore_errors=True)
            for src in sorted((HERE / kind).rglob("*.yaml")):
                dst = target / src.relative_to(HERE / kind)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [
            str(Path(self.build_lib) / "shiftlab" / "_data" / kind / src.relative_to(HERE / kind))
            for kind in SHIPPED
            for src in sorted((HERE / kind).rglob("*.yaml"))
        ]


setup(cmdclass={"build_py": BuildPyWithData})
