VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench gpu-check clean

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

# The embedded default model (MNIST digits): export fp32 + fp16 ONNX, then 36 F-PNDM samples from the
# fp16 engine. --clip-x0: the default model is small and briefly trained (README, "The embedded default model").
demo: install
	$(VENV)/bin/pndm-export build --precision fp16 --out build/demo
	$(VENV)/bin/pndm-run sample --engine build/demo/unet.fp16.onnx --method f-pndm --steps 20 -n 36 --batch 36 \
		--clip-x0 --out build/demo/samples
	@echo "demo: engines in build/demo, sample grid in build/demo/samples/grid.png"

lint: install
	$(VENV)/bin/ruff check pndm tests bench

bench: install
	$(PY) bench/bench_sampling.py

# On a machine with an NVIDIA GPU and PyTorch (CUDA) but no internet: installs nothing new (pndm itself
# into the Python that has torch, without dependencies), runs the GPU tests and the GPU benchmark and
# writes build/gpu-check/gpu_check.json + gpu_check.md. GPU_PY: that Python (default python3).
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) -m pip install --quiet -e . --no-deps --no-build-isolation
	$(GPU_PY) bench/gpu_check.py --out build/gpu-check

clean:
	rm -rf build $(VENV)
