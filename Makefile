# The two commands of the README. Both set up .venv first (scripts/setup.sh).
.PHONY: setup demo test benchmark

setup:
	bash scripts/setup.sh

# The main job on the embedded demo (no download): source-only, digits -> digits on photos.
demo: setup
	.venv/bin/shiftlab train --config configs/demo.yaml --overwrite

# The test suite, on CPU, reading the real data from $SHIFTLAB_DATA (default ../shared/data).
test: setup
	.venv/bin/python -m pytest -q

benchmark: setup
	.venv/bin/python benchmarks/pacs_source_only_cpu.py
