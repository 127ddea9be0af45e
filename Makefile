# ionflow — everything from nothing: `make run` (demo campaign), `make test` (full suite).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# the install stamp changes whenever the dependency pins change
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
PIP_FLAGS := --disable-pip-version-check -q

.PHONY: install system-deps remote-venv run test test-fast bench bench-all wheel lint clean

install: $(STAMP)

# Debian packages the integration tests use: a real single-node Slurm (slurmctld, slurmd,
# munge), headless Chromium (report rendering) and an OpenSSH server (the jobflow-remote
# tests start one on 127.0.0.1 as the current user). Installed only when missing.
APT_PACKAGES := slurmctld slurmd slurm-client munge chromium openssh-server
system-deps:
	@missing=""; \
	for b in slurmctld slurmd sbatch munged chromium sshd; do command -v $$b >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing Debian packages: $(APT_PACKAGES)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) --upgrade "pip==23.2.1" setuptools wheel

$(STAMP): $(PY) pyproject.toml constraints.txt
	@echo ">> installing torch 2.13.0 (CPU) first, then ionflow with pinned dependencies"
	$(PIP) install $(PIP_FLAGS) -c constraints.txt "torch==2.13.0"
	$(PIP) install $(PIP_FLAGS) -c constraints.txt -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

# The jobflow-remote runner's own venv: constraints.txt with pymongo 4.10.1 (jobflow-remote
# 1.0.1 needs pymongo<4.11) plus constraints-remote.txt; ionflow itself without deps.
REMOTE_VENV := .venv-remote
REMOTE_PY := $(REMOTE_VENV)/bin/python
REMOTE_STAMP := $(REMOTE_VENV)/.installed-$(shell cat pyproject.toml constraints.txt constraints-remote.txt | sha1sum | cut -c1-12)
remote-venv: $(REMOTE_STAMP)
$(REMOTE_STAMP): pyproject.toml constraints.txt constraints-remote.txt
	@echo ">> building $(REMOTE_VENV) (jobflow-remote runner, pymongo 4.10.1)"
	[ -x $(REMOTE_PY) ] || $(PYTHON) -m venv $(REMOTE_VENV)
	$(REMOTE_PY) -m pip install $(PIP_FLAGS) --upgrade "pip==23.2.1" setuptools wheel
	(grep -v '^pymongo==' constraints.txt; grep -v '^#' constraints-remote.txt) > $(REMOTE_VENV)/constraints.txt
	$(REMOTE_PY) -c "import tomllib; d=tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']; print('\n'.join(x for x in d if not x.startswith('pymongo')))" > $(REMOTE_VENV)/requirements.txt
	$(REMOTE_PY) -m pip install $(PIP_FLAGS) -c $(REMOTE_VENV)/constraints.txt "torch==2.13.0"
	$(REMOTE_PY) -m pip install $(PIP_FLAGS) -c $(REMOTE_VENV)/constraints.txt -r $(REMOTE_VENV)/requirements.txt "jobflow-remote==1.0.1" "pymongo==4.10.1"
	$(REMOTE_PY) -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	@rm -f $(REMOTE_VENV)/.installed-*
	@touch $@

run: install
	$(VENV)/bin/ionflow run workflows.yaml

test: install wheel system-deps remote-venv
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

# Build the wheel and check that the mapped packages (makers/, flows/) are inside it.
wheel: install
	@rm -rf build dist
	$(PIP) wheel $(PIP_FLAGS) --no-deps --no-build-isolation -w dist .
	$(PY) -c "import zipfile,glob,sys; n=zipfile.ZipFile(glob.glob('dist/ionflow-*.whl')[0]).namelist(); need=['ionflow/makers/__init__.py','ionflow/flows/__init__.py','ionflow/analysis/__init__.py','ionflow/cli/__init__.py']; miss=[p for p in need if p not in n]; sys.exit('wheel lacks '+str(miss) if miss else 0)"
	@rm -rf build

bench: install
	$(PY) benchmarks/analysis_vs_pymatgen.py

# every benchmark (~30–40 min): analysis, MLMD overhead, submit scale, query latency
bench-all: bench
	$(PY) benchmarks/mlmd_overhead.py
	$(PY) benchmarks/submit_scale.py
	$(PY) benchmarks/query_scale.py --repeats 12

lint: install
	$(VENV)/bin/ruff check src makers flows tests benchmarks

clean:
	rm -rf build dist .pytest_cache
