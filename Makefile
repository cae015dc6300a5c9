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

# The main job on the built-in default: synthesize, check, convert (training and evaluation join as they land).
demo: install
	rm -rf demo-out
	$(BIN)/boxforge synth demo-out/data --images 200 --classes 3 --seed 0
	$(BIN)/boxforge check demo-out/data --json demo-out/check.json
	$(BIN)/boxforge convert demo-out/data demo-out/coco --to coco
	$(BIN)/boxforge convert demo-out/data demo-out/yolo --to yolo
	$(BIN)/boxforge check demo-out/yolo --split test
	@echo "demo outputs: demo-out/data (VOC), demo-out/coco, demo-out/yolo, demo-out/check.json"

clean:
	rm -rf $(VENV) demo-out .pytest_cache
