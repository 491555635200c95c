# The two commands of the README. Both set up .venv first (scripts/setup.sh).
.PHONY: setup demo test test-fast lint benchmark docs

setup:
	bash scripts/setup.sh

# The main job on the embedded demo (no download): source-only, digits -> digits on photos.
demo: setup
	.venv/bin/shiftlab train --config configs/demo.yaml --overwrite

# The test suite, on CPU, reading the real data from $SHIFTLAB_DATA (default ../shared/data).
test: setup
	.venv/bin/python -m pytest -q

# The inner loop while developing: every test but those that train for more than a few seconds (< 3 min).
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

# ruff: lint and format check (CI runs it before the tests)
lint: setup
	.venv/bin/ruff check shiftlab tests benchmarks scripts examples
	.venv/bin/ruff format --check shiftlab tests benchmarks scripts examples

benchmark: setup
	.venv/bin/python benchmarks/pacs_source_only_cpu.py

# The documentation site (mkdocs, Material theme) from docs/ into site/; the CLI reference is made from --help.
docs: setup
	.venv/bin/python -c "import material, mkdocstrings_handlers.python" 2>/dev/null || .venv/bin/python -m pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
