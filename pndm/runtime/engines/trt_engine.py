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

from pathlib import Path

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
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise EngineError(
            f"unsupported TensorRT I/O type {dtype}: the engine must take and return float tensors"
        )
    return table[dtype]


class TrtEngine(Engine):
    backend = "tensorrt"

    def __init__(
        self,
        info: EngineInfo,
        device: torch.device,
        *,
        input_names=("x", "t"),
        output_name="eps",
        cuda_graph: bool = True,
    ):
        super().__init__(info, device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise EngineError(f"{info.path} is a TensorRT plan and needs a CUDA device: run on a GPU machine")
        trt = import_tensorrt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(info.path).read_bytes())
        if self.engine is None:
            raise EngineError(
                f"TensorRT cannot deserialize {info.path}: it is corrupt, truncated, or was built for "
                "another GPU / TensorRT version; rebuild it with pndm-export on this machine"
            )
        self.context = self.engine.create_execution_context()
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        wanted = {*input_names, output_name}
        if names != wanted:
            raise EngineError(
                f"{info.path} has I/O tensors {sorted(names)} but its manifest names {sorted(wanted)}: "
                "the manifest does not belong to this plan, re-export"
            )
        self.x_name, self.t_name = input_names
        self.out_name = output_name
        lo, _, hi = (tuple(dims) for dims in self.engine.get_tensor_profile_shape(self.x_name, 0))
        if (lo[0], hi[0]) != tuple(self.batch_range) or tuple(hi[1:]) != self.image_shape:
            raise EngineError(
                f"{info.path} was built for batch [{lo[0]}, {hi[0]}] and images {tuple(hi[1:])} but its "
                f"manifest says batch {list(self.batch_range)} and images {self.image_shape}: re-export"
            )
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in wanted}
        self.cuda_graph = cuda_graph
        self.stream = torch.cuda.Stream(self.device)
        self._buffers: dict[int, dict[str, torch.Tensor]] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def _buffers_for(self, batch: int) -> dict[str, torch.Tensor]:
        if batch not in self._buffers:
            shapes = {
                self.x_name: (batch, *self.image_shape),
                self.t_name: (batch,),
                self.out_name: (batch, *self.image_shape),
            }
            self._buffers[batch] = {
                n: torch.empty(s, dtype=self.dtypes[n], device=self.device) for n, s in shapes.items()
            }
        return self._buffers[batch]

    def _enqueue(self, buffers: dict[str, torch.Tensor]) -> None:
        for name in (self.x_name, self.t_name):
            self.context.set_input_shape(name, tuple(buffers[name].shape))
        for name, tensor in buffers.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run {self.path} (see the TensorRT log above)")

    def _launch(self, batch: int, buffers: dict[str, torch.Tensor]) -> None:
        # inside a capture of the whole sampling loop (pndm.runtime.graph_loop) the enqueue is captured
        if not self.cuda_graph or torch.cuda.is_current_stream_capturing():
            self._enqueue(buffers)
            return
        graph = self._graphs.get(batch)
        if graph is None:
            self._enqueue(buffers)  # warm-up: lets TensorRT finish its deferred setup outside the capture
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: TensorRT's own CUDA calls on other threads must not abort the capture
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self._enqueue(buffers)
            self._graphs[batch] = graph
        with torch.cuda.stream(self.stream):
            graph.replay()

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        buffers = self._buffers_for(batch)
        buffers[self.x_name].copy_(x)
        buffers[self.t_name].copy_(t)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        self._launch(batch, buffers)
        caller.wait_stream(self.stream)
        out = buffers[self.out_name]
        return out if out.dtype == torch.float32 else out.float()
