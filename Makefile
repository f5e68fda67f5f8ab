# make demo / make test: each creates .venv if missing, installs torch (CPU build) first, then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,tracking,distributed]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/east demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) benchmarks/sampling.py
	$(PY) benchmarks/grading.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/executor.py
	$(PY) benchmarks/precision.py
	$(PY) benchmarks/pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache
