"""Run eps engines (PyTorch, ONNX Runtime, TensorRT, AOTInductor), sample images, check accuracy."""

from pndm.runtime.loader import load_engine

__all__ = ["load_engine"]
