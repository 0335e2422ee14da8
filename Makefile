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
	# Test-only: pytorch-fid's Inception definition, to pin pndm's FID to it. --no-deps: its torchvision
	# requirement would replace this torch (the test builds torchvision's Python part from its wheel).
	$(PY) -m pip install --quiet --no-deps pytorch-fid==0.3.0
	touch $(STAMP)

test: install
	$(PY) -m pytest -q --durations=20

# The embedded default model (MNIST digits): export fp32, fp16 and int8 ONNX, then the same 36 seeds through
# each engine (F-PNDM, 20 steps), the checker's tables and the feature judge's FD of each, in
# build/demo/report.md (no clipping: the v-prediction default model needs none, README).
# int8: the 8 layers the automatic policy (with its end-to-end guard) keeps in float for this model's TensorRT
# form (docs/EXPORT.md, 2026-11-26), given explicitly so the demo skips the sensitivity search (two minutes).
DEMO_INT8_FLOAT := conv_in,up.0.block.0.nin_shortcut,up.0.block.1.nin_shortcut,up.0.block.2.nin_shortcut
DEMO_INT8_FLOAT := $(DEMO_INT8_FLOAT),down.1.block.1.temb_proj,down.0.block.0.conv1,up.2.attn.2.k
DEMO_INT8_FLOAT := $(DEMO_INT8_FLOAT),up.1.block.0.conv2

demo: install
	$(VENV)/bin/pndm-export build --precision fp16 --out build/demo
	$(VENV)/bin/pndm-export build --precision int8 --int8-form tensorrt --keep-float $(DEMO_INT8_FLOAT) --out build/demo
	$(PY) -m pndm.scoring.demo build/demo
	@echo "demo: build/demo/report.md (compare.png: the same seeds through each engine)"

lint: install
	$(VENV)/bin/ruff check pndm tests bench

bench: install
	$(PY) bench/bench_sampling.py

# On a machine with an NVIDIA GPU and PyTorch (CUDA) but no internet: installs nothing new (pndm itself
# into the Python that has torch, without dependencies), runs the GPU tests and the GPU benchmark and
# writes build/gpu-check/gpu_check.json + gpu_check.md. GPU_PY: that Python (default python3);
# GPU_CHECK_ARGS: options of bench/gpu_check.py (e.g. --repeats 3 --rounds 2).
GPU_PY ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PY) -m pip install --quiet -e . --no-deps --no-build-isolation
	$(GPU_PY) bench/gpu_check.py --out build/gpu-check $(GPU_CHECK_ARGS)

clean:
	rm -rf build $(VENV)
