"""ONNX Runtime engine: an ``.onnx`` file run with its I/O bound to torch tensors.

CPU: every graph optimization (``ORT_ENABLE_ALL``) and one intra-op thread per core.
CUDA (``onnxruntime-gpu``, the ``[gpu]`` extra): the CUDA execution provider, inputs and outputs
bound to CUDA tensors, so nothing leaves the device between solver steps.

Outputs are written into a torch tensor preallocated per batch size: every call with the same
batch size returns the SAME tensor (the solvers and the checker copy what they keep).
"""

from __future__ import annotations

import numpy as np
import torch

from pndm.errors import EngineError
from pndm.runtime.engines.base import Engine, EngineInfo

# ONNX Runtime's type names -> (torch dtype, the numpy scalar type ORT's binding API takes as a tag).
_ORT_TYPES = {
    "tensor(float)": (torch.float32, np.float32),
    "tensor(float16)": (torch.float16, np.float16),
    "tensor(double)": (torch.float64, np.float64),
}


def session_options(threads: int | None = None):
    """Session options for speed: all graph optimizations, one intra-op thread per physical core
    (:func:`pndm.runtime.threads.default_threads`: shared among torchrun processes).
    """
    import onnxruntime as ort

    from pndm.runtime.threads import default_threads

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3
    return options


def providers_for(device: torch.device) -> list[str]:
    """ORT execution providers for ``device``; CUDA needs onnxruntime-gpu."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineError(
                "ONNX Runtime has no CUDA provider: pip install 'pndm[gpu]' (onnxruntime-gpu), "
                "or use --device cpu"
            )
        # Run on torch's current stream, so bound CUDA tensors need no extra synchronization.
        options = {
            "device_id": device.index or 0,
            "user_compute_stream": str(torch.cuda.current_stream(device).cuda_stream),
        }
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtEngine(Engine):
    """An ONNX model with inputs ``x``, ``t`` and output ``eps`` (names from the manifest)."""

    backend = "onnxruntime"

    def __init__(
        self,
        info: EngineInfo,
        device: torch.device,
        *,
        input_names=("x", "t"),
        output_name="eps",
        threads: int | None = None,
    ):
        import onnxruntime as ort

        super().__init__(info, device)
        try:
            self.session = self._session(ort, threads)
        except EngineError:
            raise
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(
                f"ONNX Runtime cannot load {info.path} ({first}): the file is corrupt or truncated, "
                "re-export it"
            ) from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        missing = [n for n in input_names if n not in inputs] + [
            n for n in (output_name,) if n not in outputs
        ]
        if missing:
            raise EngineError(
                f"{info.path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}, but its manifest "
                f"names {list(input_names)} -> {output_name}: the manifest does not belong to this file, "
                "re-export"
            )
        self.x_name, self.t_name = input_names
        self.out_name = output_name
        self._check_shape(inputs[self.x_name].shape, "input " + self.x_name)
        self._check_shape(outputs[self.out_name].shape, "output " + self.out_name)
        self.x_type = self._ort_type(inputs[self.x_name].type)
        self.t_type = self._ort_type(inputs[self.t_name].type)
        self.out_type = self._ort_type(outputs[self.out_name].type)
        self.binding = self.session.io_binding()
        self._outputs: dict[int, torch.Tensor] = {}

    def _session(self, ort, threads: int | None):
        """CPU: through the optimized-graph cache (:mod:`pndm.runtime.engine_cache`), keyed by the
        file's verified SHA-256 from the manifest; CUDA: optimized on every load."""
        options, providers = session_options(threads), providers_for(self.device)
        sha256 = None
        if self.manifest is not None:
            from pathlib import Path

            from pndm.export.manifest import engine_entry

            sha256 = engine_entry(self.manifest, Path(self.path)).get("sha256")
        if self.device.type == "cpu" and sha256:
            from pndm.runtime.engine_cache import onnxruntime_session

            return onnxruntime_session(self.path, sha256, options, providers)
        return ort.InferenceSession(self.path, sess_options=options, providers=providers)

    def _ort_type(self, name: str):
        if name not in _ORT_TYPES:
            raise EngineError(f"{self.path}: unsupported tensor type {name} (expected float or float16)")
        return _ORT_TYPES[name]

    def _check_shape(self, shape, what: str) -> None:
        if len(shape) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(shape[1:], self.image_shape, strict=True)
        ):
            raise EngineError(
                f"{self.path}: {what} has shape {shape} but the manifest says (batch, {self.image_shape}): "
                "the manifest does not belong to this file, re-export"
            )

    def _bind(self, name: str, tensor: torch.Tensor, element_type, output: bool = False) -> None:
        device_type = "cuda" if tensor.is_cuda else "cpu"
        device_id = tensor.device.index or 0
        bind = self.binding.bind_output if output else self.binding.bind_input
        bind(name, device_type, device_id, element_type, tuple(tensor.shape), tensor.data_ptr())

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        x_in = x.to(self.x_type[0]).contiguous()
        t_in = t.to(self.t_type[0]).contiguous()
        out = self._outputs.get(batch)
        if out is None:
            out = torch.empty((batch, *self.image_shape), dtype=self.out_type[0], device=self.device)
            self._outputs[batch] = out
        self._bind(self.x_name, x_in, self.x_type[1])
        self._bind(self.t_name, t_in, self.t_type[1])
        self._bind(self.out_name, out, self.out_type[1], output=True)
        self.session.run_with_iobinding(self.binding)
        return out if out.dtype == torch.float32 else out.float()
