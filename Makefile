# GCE Survival Kit. Quick start: `make demo`, `make test`.
# Every target installs what it needs itself, so a fresh machine (or CI) works.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system-deps test lint demo clean constraints

# The project and its pinned dependencies (constraints.txt) in a virtualenv.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[tf,dev]'
	touch $@

setup: $(STAMP)

# packer, shellcheck, openssh-server, git, curl from the OS packages (needs root or sudo).
system-deps:
	bash scripts/system-deps.sh

lint: setup system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

# The main job on localgce: start it if needed, bake a local image with Packer if the family has none,
# `invoke train --branch exp1 --chaos 2`, `invoke status`, and the timeline PNG.
demo: setup system-deps
	$(PY) -m survival.demo

constraints: setup
	$(PY) -m pip freeze --exclude-editable | sed '1i # Exact versions of every package the kit installs (direct and transitive).\n# Regenerate: make constraints  (after changing pyproject.toml pins).' > constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
