VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the local CPU build. A newer or unpinned torch would pull GBs of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/pndm-export build --precision fp16 --out build/demo
	$(VENV)/bin/pndm-run sample --engine build/demo/unet.onnx --method f-pndm --steps 20 --num 16 --out build/demo/samples

lint: install
	$(VENV)/bin/ruff check pndm tests bench

bench: install
	$(PY) bench/bench_sampling.py

clean:
	rm -rf build $(VENV)
