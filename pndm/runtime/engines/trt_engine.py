"""TensorRT engine: a serialized ``.plan`` run with torch tensors as its device buffers.

Written against the TensorRT 10/11 runtime API (name-based I/O): ``set_input_shape`` per batch
within optimization profile 0, ``set_tensor_address`` with ``tensor.data_ptr()`` and
``execute_async_v3`` on a private CUDA stream. With ``cuda_graph=True`` the enqueue is captured
into a CUDA graph per batch size after one warm-up run, then replayed; inputs are copied into
static per-batch buffers and the SAME output tensor is returned on every call with that batch.

Works with the full ``tensorrt`` package or the lean runtime (``tensorrt_lean``). A TensorRT
runtime created on a machine without a CUDA device can crash the process, so the device is
checked first.
"""

from __future__ import annotations

import torch

from pndm.errors import EngineError
from pndm.runtime.engines.base import Engine, EngineInfo


def import_tensorrt():
    """The TensorRT Python module: the full bindings, else the lean runtime."""
    try:
        import tensorrt as trt
    except ImportError:
        try:
            import tensorrt_lean as trt
        except ImportError as e:
            raise EngineError(
                "TensorRT is not installed: pip install 'pndm[trt]' on a machine with an NVIDIA GPU"
            ) from e
    return trt


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT64: torch.int64}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise EngineError(
            f"unsupported TensorRT I/O type {dtype}: "
            "the engine must take float (and int64 class label) tensors"
        )
    return table[dtype]


def deserialize_plan(trt, logger, data: bytes, path: str):
    """(runtime, engine) for plan bytes, deserialized with host code disallowed.

    A plan built version-compatible or with plugins can carry host code (a shared library) that
    deserialization would run; pndm never builds such plans, so the runtime refuses them
    (``IRuntime.engine_host_code_allowed = False``, TensorRT 10; set wherever the attribute exists).
    """
    runtime = trt.Runtime(logger)
    if hasattr(runtime, "engine_host_code_allowed"):
        runtime.engine_host_code_allowed = False
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineError(
            f"TensorRT cannot deserialize {path}: it is corrupt, truncated, carries host code, or was built "
            "for another GPU / TensorRT version; rebuild it with pndm-export on this machine"
        )
    return runtime, engine


class TrtEngine(Engine):
    backend = "tensorrt"

    def __init__(self, info: EngineInfo, device: torch.device, *, cuda_graph: bool = True,
                 trust: bool = False):
        super().__init__(info, device, trust=trust)
        self.cuda_graph = cuda_graph

    def _open(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise EngineError(f"{self.path} is a TensorRT plan and needs a CUDA device: run on a GPU machine")
        data = self.checked_bytes("tensorrt")
        trt = import_tensorrt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime, self.engine = deserialize_plan(trt, self.logger, data, self.path)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.check_names(inputs, [n for n in names if n not in inputs])
        x_name = self.io.input_names[0]
        lo, _, hi = (tuple(dims) for dims in self.engine.get_tensor_profile_shape(x_name, 0))
        if (lo[0], hi[0]) != tuple(self.batch_range) or tuple(hi[1:]) != self.image_shape:
            raise EngineError(
                f"{self.path} was built for batch [{lo[0]}, {hi[0]}] and images {tuple(hi[1:])} but its "
                f"manifest says batch {list(self.batch_range)} and images {self.image_shape}: re-export"
            )
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def _close(self) -> None:
        self._graphs.clear()
        del self.context, self.engine, self.runtime

    def _enqueue(self, batch: int) -> None:
        for name in self.io.input_names:
            self.context.set_input_shape(name, tuple(self.buffer(name, batch).shape))
        for name in (*self.io.input_names, self.io.output_name):
            self.context.set_tensor_address(name, self.buffer(name, batch).data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run {self.path} (see the TensorRT log above)")

    def _launch(self, batch: int) -> None:
        # inside a capture of the whole sampling loop (pndm.runtime.graph_loop) the enqueue is captured
        if not self.cuda_graph or torch.cuda.is_current_stream_capturing():
            self._enqueue(batch)
            return
        graph = self._graphs.get(batch)
        if graph is None:
            self._enqueue(batch)  # warm-up: lets TensorRT finish its deferred setup outside the capture
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: TensorRT's own CUDA calls on other threads must not abort the capture
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self._enqueue(batch)
            self._graphs[batch] = graph
        with torch.cuda.stream(self.stream):
            graph.replay()

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = next(iter(inputs.values())).shape[0]
        for name, tensor in inputs.items():
            self.buffer(name, batch).copy_(tensor)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        self._launch(batch)
        caller.wait_stream(self.stream)
        out = self.buffer(self.io.output_name, batch)
        return out if out.dtype == torch.float32 else out.float()
