# One-command set-up: a virtual environment in .venv on first use (torch from the pinned wheels).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-min clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[train,dev,plot,fast-eval]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dynamic_atss demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# The dependency floors of pyproject.toml, installed in a separate venv, and a named fast subset of the tests.
# Only torch 2.14.1 / torchvision 0.29.1 wheels lie on this machine's disk: MIN_TORCH pins what can be had
# (elsewhere: make test-min MIN_TORCH="torch==2.6.0 torchvision==0.21.0").
MIN_VENV ?= /tmp/dynamic-atss-min
MIN_TORCH ?= torch==2.14.1 torchvision==0.29.1
MIN_TESTS ?= tests/test_main.py tests/test_cli_predict.py tests/test_cli_export.py tests/test_errors.py \
	tests/test_packaging.py tests/test_detector.py tests/test_factory.py tests/test_transforms.py \
	tests/test_evaluation.py tests/test_serialization.py tests/test_checks.py
test-min:
	rm -rf $(MIN_VENV)
	python3 -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python -m pip install -q $(MIN_TORCH)
	python3 .ci/floors.py train --skip torch torchvision > $(MIN_VENV)/floors.txt
	echo "pytest==8.0.0" >> $(MIN_VENV)/floors.txt
	$(MIN_VENV)/bin/python -m pip install -q -r $(MIN_VENV)/floors.txt
	$(MIN_VENV)/bin/python -m pip install -q --no-deps -e .
	$(MIN_VENV)/bin/python -m pip list --format=freeze > $(MIN_VENV)/installed.txt
	PYTHONPATH=$(CURDIR) OMP_NUM_THREADS=1 $(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(MIN_TESTS) $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
