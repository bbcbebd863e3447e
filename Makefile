# Two commands: `make course` (JupyterLab on the notebooks) and `make test` (the whole test suite).
# Both create the virtual environment in .venv on first use (about 2-3 minutes, then cached).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# Tested versions; empty (CONSTRAINTS=) inside a conda environment that brings its own PyTorch.
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# OpenMP busy-waiting makes two torch processes on a 2-core laptop 6-12x slower: set before torch starts.
export OMP_WAIT_POLICY := PASSIVE
export PYTHONDONTWRITEBYTECODE := 1
# Offline unless the user allows downloads with COURSE_ONLINE=1.
ifneq ($(COURSE_ONLINE),1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
endif
# Headless runs: fast configs, no progress bars, widgets drawn once.
HEADLESS_ENV := COURSE_FAST=1 COURSE_HEADLESS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The mode a student gets from `make course`: full-size configs (COURSE_FAST unset), headless for CI.
FULL_ENV := COURSE_HEADLESS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: help install course test test-unit test-notebooks test-full html outputs benchmark lock clean

help:
	@echo "make course     - open JupyterLab on notebooks/ (offline, course models)"
	@echo "make test       - unit + parity tests, every notebook under nbval (fast mode), every notebook in full mode"
	@echo "make test-full  - only the full-mode pass over the notebooks"
	@echo "make html       - execute every notebook headlessly into build/html/ (for publishing)"
	@echo "make outputs    - re-execute the notebooks in place (full mode, as make course) to refresh stored outputs"
	@echo "make benchmark  - timings, memory and model quality into build/benchmark.md"
	@echo "make labs       - student versions of the graded labs -> build/labs/release/"
	@echo "make grade-lab LAB=lab_clip SUBMISSION=x.ipynb / make grade-labs LAB=lab_clip FOLDER=dir - autograde (nbgrader, offline)"
	@echo "make slides     - every notebook as an offline reveal.js deck -> build/slides/ (live: Alt+R in JupyterLab)"
	@echo "make install    - only create/update the virtual environment in $(VENV)"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

course: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

test: $(STAMP)
	$(HEADLESS_ENV) $(BIN)/python -m pytest -q
	env -u COURSE_FAST $(FULL_ENV) $(BIN)/python -m pytest -q -m full_mode --durations=0 tests/test_full_mode.py

test-unit: $(STAMP)
	$(HEADLESS_ENV) $(BIN)/python -m pytest -q tests

test-notebooks: $(STAMP)
	$(HEADLESS_ENV) $(BIN)/python -m pytest -q notebooks

test-full: $(STAMP)
	env -u COURSE_FAST $(FULL_ENV) $(BIN)/python -m pytest -q -m full_mode --durations=0 tests/test_full_mode.py

html: $(STAMP)
	mkdir -p build/html
	COURSE_HEADLESS=1 HF_HUB_OFFLINE=1 $(BIN)/jupyter nbconvert --to html --execute \
		--ExecutePreprocessor.timeout=1800 --output-dir build/html $(NOTEBOOKS)

# Stored outputs are what a student sees after `make course`: full mode (COURSE_FAST unset), headless.
# nbval (fast mode) compares only the NBVAL_CHECK_OUTPUT cells, so those must print the same in both modes.
outputs: $(STAMP)
	env -u COURSE_FAST $(FULL_ENV) $(BIN)/python scripts/execute_notebooks.py $(or $(NB),$(NOTEBOOKS))

benchmark: $(STAMP)
	mkdir -p build
	$(HEADLESS_ENV) $(BIN)/python -m benchmarks --output build/benchmark.md

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^course-utils' > constraints.txt.new
	(head -n 2 constraints.txt; cat constraints.txt.new) > constraints.txt.tmp && rm constraints.txt.new && mv constraints.txt.tmp constraints.txt

clean:
	rm -rf build .pytest_cache
	find . -name __pycache__ -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

# Graded labs (labs/source/<lab>/<lab>.ipynb) with nbgrader, offline (sqlite gradebook); outputs under build/labs/.
.PHONY: labs grade-lab grade-labs
labs: $(STAMP)
	$(BIN)/python scripts/labs.py generate $(LAB)

grade-lab: $(STAMP)
	@test -n "$(LAB)" -a -n "$(SUBMISSION)" || { echo "usage: make grade-lab LAB=lab_clip SUBMISSION=path/to/lab_clip.ipynb"; exit 2; }
	$(BIN)/python scripts/labs.py grade $(LAB) $(SUBMISSION)

grade-labs: $(STAMP)
	@test -n "$(LAB)" -a -n "$(FOLDER)" || { echo "usage: make grade-labs LAB=lab_clip FOLDER=path/to/submissions"; exit 2; }
	$(BIN)/python scripts/labs.py grade-folder $(LAB) $(FOLDER)

# Lecture mode: each notebook as an offline reveal.js deck of its stored outputs -> build/slides/NN_name.slides.html.
.PHONY: slides
slides: $(STAMP)
	$(BIN)/python scripts/slides.py --build
	@echo "Open build/slides/<notebook>.slides.html in a browser (offline). Live slideshow: make course, then Alt+R."
