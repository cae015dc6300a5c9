# `make demo` and `make test` are all a new user needs; both install first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
# torch and torchvision: the releases that lie on this machine's disk (see README).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# The main job on the built-in default: synthesize, check, train, evaluate, predict, export, plot.
DEMO := demo-out
demo: install
	rm -rf $(DEMO)
	$(BIN)/boxforge synth $(DEMO)/data --images 300 --classes 3 --seed 0
	$(BIN)/boxforge check $(DEMO)/data --json $(DEMO)/check.json --plots $(DEMO)/check-plots
	$(BIN)/boxforge convert $(DEMO)/data $(DEMO)/coco --to coco
	$(BIN)/boxforge train --data $(DEMO)/data --model ssd_tiny --img-size 256 --time 4 --val-every 4 --log-every 15 --out $(DEMO)/run
	$(BIN)/boxforge eval --data $(DEMO)/data --split test --weights $(DEMO)/run/best.pt --metric all --json $(DEMO)/eval.json --plots $(DEMO)/eval-plots
	$(BIN)/boxforge predict --weights $(DEMO)/run/best.pt $(DEMO)/data/JPEGImages/00000[0-7].jpg --out $(DEMO)/predict --json $(DEMO)/predict/predictions.json
	$(BIN)/boxforge export --weights $(DEMO)/run/best.pt --out $(DEMO)/model.onnx
	$(BIN)/boxforge plot $(DEMO)/run --out $(DEMO)/plots
	@echo "demo outputs in $(DEMO)/: check.json, check-plots/, run/ (best.pt, metrics.jsonl), eval.json, eval-plots/, predict/, model.onnx, plots/"
	@echo "open $(DEMO)/run/report.html: settings, dataset, curves, best.pt's evaluation and drawn predictions in one file"

# Every benchmark against its baseline in the same run (not part of `make test`; < 30 min on 2 cores):
# bench/results/*.json, then the README performance table (bench/table.py). BENCH_NOTE="..." is recorded.
bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
