# The README's two commands are `make demo` and `make test`; both install first if needed.
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: install demo test test-all lint format bench docker docker-smoke clean

install: .venv/.installed

# torch is pinned to the CPU wheel here; the Docker image installs the CUDA build instead.
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $@

demo: install
	$(PY) -m worker demo --dir demo

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ''

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: install
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/distances.py
	$(PY) benchmarks/embed.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/report_json.py
	$(PY) benchmarks/e2e.py

clean:
	rm -rf .venv demo out .cache

-include docker/Makefile.inc
