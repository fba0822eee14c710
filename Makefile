# Two commands on a fresh machine: `make demo` and `make test`. The lessons are listed in course.py.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OLDEST := .venv-oldest
SCRIPTS := $(shell $(PYTHON) course.py)

.PHONY: venv venv-dev demo test test-fast test-oldest lint notebooks exercises timings gpu-check versions doctor clean

# The lessons' requirements only (`make demo`), then the test, lint and notebook tools on top.
$(VENV)/.lessons: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.lessons requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.lessons
venv-dev: $(VENV)/.dev

demo: venv
	@set -e; for script in $(SCRIPTS); do printf "\n##### %s\n" $$script; $(PY) $$script; done

# One pytest worker per core; worksteal hands a finished worker the tests another has queued, so the
# long whole-process tests do not end up in one worker's queue while the other sits idle.
test: venv-dev
	$(PY) -m pytest -n auto --dist worksteal

# The local loop: skips whole-lesson, notebook and multi-process runs (the tests marked slow).
test-fast: venv-dev
	$(PY) -m pytest -n auto --dist worksteal -m "not slow"

# Every requirement at its lower bound, resolved by uv, in a venv without setuptools of its own
# (what uv and `python -m venv` on Python 3.12+ make): the same suite and lint as `make test`. uv leaves
# compiling bytecode to the first import unless told; where PYTHONDONTWRITEBYTECODE is set (as on the
# machines this course is tested on), every process would then compile torch from source again.
$(OLDEST)/.installed: requirements.txt requirements-dev.txt $(VENV)/.dev
	rm -rf $(OLDEST)
	$(VENV)/bin/uv venv --quiet --python $(PYTHON) $(OLDEST)
	VIRTUAL_ENV=$(OLDEST) $(VENV)/bin/uv pip install --quiet --compile-bytecode --resolution lowest-direct -r requirements-dev.txt
	touch $@

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m ruff check .
	$(OLDEST)/bin/python -m pytest -n auto --dist worksteal

lint: venv-dev
	$(PY) -m ruff check .

# Writes notebooks/<lesson>.ipynb from each script and executes it (full mode, CPU).
notebooks: venv-dev
	$(PY) tools/notebooks.py build

# Your progress through the exercises and what to do next; `make exercises HINT=2` adds each failing exercise's recipe.
exercises: venv-dev
	$(PY) -m exercises.summary

# What this machine can run: versions, devices, DDP backends, torch.compile and ONNX Runtime, a verdict per lesson.
doctor: venv
	$(PY) course.py doctor

timings: venv
	$(PY) tools/timings.py

# On a CUDA machine: every lesson on the GPU (quick), then the suite (which covers cuda where present).
gpu-check: venv-dev
	@set -e; for script in $(SCRIPTS); do printf "\n##### %s --device cuda\n" $$script; \
		$(PY) $$script --device cuda --quick --plots-dir $$(mktemp -d); done
	$(PY) -m pytest -m "not slow"

versions: venv-dev
	$(PY) tools/versions.py

clean:
	rm -rf $(VENV) $(OLDEST) .pytest_cache .ruff_cache .hypothesis
