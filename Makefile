# Two entry points, each setting up the virtual environment on first use:
#   make run   - the main job: SARL-GELU with balanced replay on Split CIFAR-100 (quick protocol)
#   make test  - the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test compare clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) examples/split_cifar100_sarl_balanced.py

test: setup  # two worker processes (pytest-xdist), handed one test at a time, the long ones first
	$(PY) -m pytest -n 2 --maxschedchunk 1

compare: setup  # choose each method's learning rate on held-out training images, then the table
	$(PY) -m benchmarks.compare --protocol quick --select_lr
	$(PY) -m benchmarks.compare --protocol quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
