"""mkdocs hook: adds cli.md, the command line reference made from each subcommand's --help at build time
(shiftlab.cli_reference.render), so the page is never stale and never checked in."""

from mkdocs.structure.files import File


def on_files(files, config):
    from shiftlab.cli_reference import render

    files.append(File.generated(config, "cli.md", content=render()))
    return files
