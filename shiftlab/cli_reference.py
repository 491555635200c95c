"""The CLI reference page (``docs/cli.md`` of the documentation site), made from each subcommand's own
``--help`` at build time, so the page cannot drift from the code: the mkdocs hook
(``scripts/mkdocs_hooks.py``) calls :func:`render`, and ``python -m shiftlab.cli_reference`` prints it.
"""

from __future__ import annotations

import contextlib
import io
import os


def command_help(argv: list[str]) -> str:
    """What ``shiftlab <argv>`` prints (``--help``), captured in this process at a fixed width of 100 columns."""
    from .cli import main

    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the page is the same on every machine
    try:
        with contextlib.redirect_stdout(out):
            try:
                main(argv)
            except SystemExit:  # argparse's --help exits
                pass
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue().rstrip()


def render() -> str:
    """The Markdown page: the command list, then one section per subcommand with its ``--help``."""
    from .cli import COMMANDS

    parts = [
        "# Command line reference",
        "",
        "Generated from each command's `--help` when the site is built (`shiftlab/cli_reference.py`). "
        "`shiftlab --version` prints the version; `python -m shiftlab` is the same as `shiftlab`.",
        "",
        "```text",
        command_help(["--help"]),
        "```",
    ]
    for name in COMMANDS:
        parts += ["", f"## shiftlab {name}", "", "```text", command_help([name, "--help"]), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
