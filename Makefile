# Two commands on a fresh machine: `make demo` and `make test`. The lessons are listed in course.py.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OLDEST := .venv-oldest
SCRIPTS := $(shell $(PYTHON) course.py)

.PHONY: venv venv-dev demo test test-fast test-oldest lint notebooks exercises timings gpu-check versions doctor clean \
	site site-check site-test serve

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

# The course as a website in site/ (tools/website.py): Sphinx and myst-nb render the committed notebooks, nothing
# re-runs. requirements-docs.txt stays out of requirements-dev.txt, so make test-oldest does not install it.
$(VENV)/.docs: $(VENV)/.lessons requirements-docs.txt
	$(PY) -m pip install --quiet -r requirements-docs.txt
	touch $@

SITE_INPUTS := course.py README.md tools/website.py $(SCRIPTS) $(wildcard notebooks/*.ipynb exercises/*.py \
	exercises/solutions/*.py)
site/.buildinfo: $(VENV)/.docs $(SITE_INPUTS)
	$(PY) tools/website.py build

site: site/.buildinfo

# Fast checks of the built HTML: every lesson page, image and internal link is there, nothing loads from the network.
site-check: site
	$(PY) tools/website.py check

# The site in headless Chromium (Debian's package, installed with apt-get where this runs as root), served on
# 127.0.0.1; it skips, saying why, where no Chromium can be found or installed. Screenshots go to a temp folder.
site-test: site
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's chromium with apt-get"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
				|| echo "apt-get could not install chromium: the browser test will skip"; \
		else echo "no chromium, and no root apt-get to install it: the browser test will skip"; fi; }
	timeout 600 $(PY) -m pytest -p no:cacheprovider -rs -s tools/website_browser_test.py

PORT ?= 8000
serve: site
	$(PY) tools/website.py serve --port $(PORT)

clean:
	rm -rf $(VENV) $(OLDEST) .pytest_cache .ruff_cache .hypothesis site
