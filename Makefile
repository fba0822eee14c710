# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCRIPTS := $(wildcard tensor_basics.py autograd_demo.py linear_regression_torch.py custom_nn_module.py dataset_loader_demo.py)

.PHONY: venv demo test lint timings clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	@set -e; for script in $(SCRIPTS); do printf "\n##### %s\n" $$script; $(PY) $$script; done

test: venv
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check .

timings: venv
	$(PY) tools/timings.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
