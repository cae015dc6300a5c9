# `make demo` and `make test` are all a new user needs; both install first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
# torch and torchvision: the releases that lie on this machine's disk (see README).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python -m boxforge demo --out demo-out

clean:
	rm -rf $(VENV) demo-out .pytest_cache
