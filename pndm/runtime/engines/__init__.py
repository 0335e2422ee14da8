"""Engine backends: PyTorch (reference), ONNX Runtime, TensorRT, AOTInductor."""

from pndm.runtime.engines.base import Engine, EngineInfo

__all__ = ["Engine", "EngineInfo"]
