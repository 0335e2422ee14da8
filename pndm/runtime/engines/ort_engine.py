"""ONNX Runtime engine: an ``.onnx`` file run with its I/O bound to torch tensors.

CPU: every graph optimization (``ORT_ENABLE_ALL``). A call's batch is split into :data:`CPU_STREAMS`
parts run at the same time (ONNX Runtime releases the GIL), each on its share of the threads (one
per physical core): many of a UNet's ops (normalizations, Q/DQ and layout conversions) run on one
thread whatever the session's thread count, and two parts keep both cores busy through them
(docs/BENCHMARKS.md, "two streams"). Every image's result is the same as in a whole-batch run.
CUDA (``onnxruntime-gpu``, the ``[gpu]`` extra): the CUDA execution provider, inputs and outputs
bound to CUDA tensors, so nothing leaves the device between solver steps.

Outputs are written into a torch tensor preallocated per batch size: every call with the same
batch size returns the SAME tensor (the solvers and the checker copy what they keep).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import torch

from pndm.errors import EngineError
from pndm.runtime.engines.base import Engine, EngineInfo

#: Parts of a CPU call's batch run at the same time (at most one per thread; a batch of one runs whole).
CPU_STREAMS = 2

# ONNX Runtime's type names -> (torch dtype, the numpy scalar type ORT's binding API takes as a tag).
_ORT_TYPES = {
    "tensor(float)": (torch.float32, np.float32),
    "tensor(float16)": (torch.float16, np.float16),
    "tensor(double)": (torch.float64, np.float64),
    "tensor(int64)": (torch.int64, np.int64),
}


def session_options(threads: int):
    """Session options for speed: all graph optimizations, ``threads`` intra-op threads (the engine's
    share of :func:`pndm.runtime.threads.default_threads` per part of a batch, module doc)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return options


def providers_for(device: torch.device) -> list[str]:
    """ORT execution providers for ``device``; CUDA needs onnxruntime-gpu."""
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineError(
                "ONNX Runtime has no CUDA provider: pip install 'pndm[gpu]' (onnxruntime-gpu), "
                "or use device='cpu'"
            )
        # Run on torch's current stream, so bound CUDA tensors need no extra synchronization.
        options = {
            "device_id": device.index or 0,
            "user_compute_stream": str(torch.cuda.current_stream(device).cuda_stream),
        }
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtEngine(Engine):
    """An ONNX model whose inputs and output are named by the manifest's I/O spec."""

    backend = "onnxruntime"

    def __init__(self, info: EngineInfo, device: torch.device, *, threads: int | None = None):
        super().__init__(info, device)
        from pndm.runtime.threads import default_threads

        self.threads = threads or default_threads()
        # Parts of a batch run at the same time on the CPU, each on its share of the threads (module doc).
        self.streams = min(CPU_STREAMS, self.threads) if self.device.type == "cpu" else 1

    def _open(self) -> None:
        import onnxruntime as ort

        try:
            self.session = self._session(ort)
        except EngineError:
            raise
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(
                f"ONNX Runtime cannot load {self.path} ({first}): the file is corrupt or truncated, "
                "re-export it"
            ) from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.check_names(inputs, outputs)
        x_name, out_name = self.io.input_names[0], self.io.output_name
        self.check_image_dims(inputs[x_name].shape, "input " + x_name)
        self.check_image_dims(outputs[out_name].shape, "output " + out_name)
        self.ort_types = {name: self._ort_type(node.type) for name, node in {**inputs, **outputs}.items()}
        self.dtypes = {name: dtype for name, (dtype, _) in self.ort_types.items()}
        self._bindings = [self.session.io_binding() for _ in range(self.streams)]  # one per part in flight
        self._pool = ThreadPoolExecutor(self.streams - 1, "pndm-ort") if self.streams > 1 else None

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        del self._bindings, self.session

    def describe(self) -> dict:
        """The base summary plus the threads and the parts a batch runs in at the same time."""
        return {**super().describe(), "threads": self.threads, "streams": self.streams}

    def _session(self, ort):
        """CPU: through the optimized-graph cache (:mod:`pndm.runtime.engine_cache`), keyed by the
        file's SHA-256 that the loader verified against the manifest; CUDA: optimized on every load."""
        options = session_options(self.threads // self.streams)
        providers = providers_for(self.device)
        if self.device.type == "cpu" and self.info.sha256:
            from pndm.runtime.engine_cache import onnxruntime_session

            return onnxruntime_session(self.path, self.info.sha256, options, providers)
        return ort.InferenceSession(self.path, sess_options=options, providers=providers)

    def _ort_type(self, name: str):
        if name not in _ORT_TYPES:
            raise EngineError(
                f"{self.path}: unsupported tensor type {name} (expected float, float16 or int64)"
            )
        return _ORT_TYPES[name]

    def _parts(self, batch: int) -> list[slice]:
        """The slices of a batch run at the same time: one per CPU thread, at least one image each."""
        count = min(batch, len(self._bindings))
        return [slice(i * batch // count, (i + 1) * batch // count) for i in range(count)]

    def _bind(self, binding, name: str, tensor: torch.Tensor, output: bool = False) -> None:
        device_type = "cuda" if tensor.is_cuda else "cpu"
        device_id = tensor.device.index or 0
        bind = binding.bind_output if output else binding.bind_input
        bind(name, device_type, device_id, self.ort_types[name][1], tuple(tensor.shape), tensor.data_ptr())

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = next(iter(inputs.values())).shape[0]
        inputs = {name: tensor.to(self.dtypes[name]).contiguous() for name, tensor in inputs.items()}
        out = self.buffer(self.io.output_name, batch)
        first, *others = self._parts(batch)
        # ONNX Runtime releases the GIL while it runs: the other parts run on the pool meanwhile.
        pending = [self._pool.submit(self._run_part, binding, inputs, out, part)
                   for binding, part in zip(self._bindings[1:], others, strict=False)]
        try:
            self._run_part(self._bindings[0], inputs, out, first)
        finally:  # no part outlives the call, whatever fails
            wait(pending)
        for future in pending:
            future.result()
        return out if out.dtype == torch.float32 else out.float()

    def _run_part(self, binding, inputs: dict[str, torch.Tensor], out: torch.Tensor, part: slice) -> None:
        """Run the images ``part`` of ``inputs`` into the same images of ``out`` (views: no copies)."""
        for name, tensor in inputs.items():
            self._bind(binding, name, tensor[part])
        self._bind(binding, self.io.output_name, out[part], output=True)
        self.session.run_with_iobinding(binding)
