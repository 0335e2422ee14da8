"""The single place where samplers call the eps model.

Every sampler goes through :class:`EpsEvaluator`, which builds the ``(B,)`` timestep tensor,
checks the output (shape, NaN/Inf), takes a private copy (an engine may return the same buffer
on every call), counts evaluations, and reports each one to the caller's callback.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pndm.errors import PndmError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], None]
Transform = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class EpsEvaluator:
    """Calls ``eps(x, t)`` with ``t`` as a ``(B,)`` tensor of x's dtype and device.

    ``count`` is the number of evaluations made so far (the NFE). ``callback(x, t, eps, index)``
    receives tensors the samplers never modify afterwards, so they are safe to keep; it sees the
    model's own output. ``transform(x, t, eps) -> eps`` (e.g. x0 clipping) is applied after it.
    """

    def __init__(self, eps: EpsFn, callback: Callback | None = None, transform: Transform | None = None):
        if not callable(eps):
            raise PndmError(f"eps must be a callable eps(x, t) -> Tensor (got {type(eps).__name__})")
        self._eps = eps
        self._callback = callback
        self._transform = transform
        self.count = 0

    @property
    def differentiable(self) -> EpsFn | None:
        """The eps function forward-mode AD can go through: a PyTorch engine's module (whose own call
        runs under inference mode), a plain callable itself; None for ONNX Runtime / TensorRT / AOTI."""
        backend = getattr(self._eps, "backend", None)
        if backend is None:
            return self._eps
        module = getattr(self._eps, "model", None)
        return module if backend == "torch" and isinstance(module, torch.nn.Module) else None

    def jvp(self, x: torch.Tensor, t: float, dx: torch.Tensor, dt: float) -> torch.Tensor:
        """The directional derivative D eps(x, t)[(dx, dt)] by forward-mode AD (``torch.func.jvp``);
        counts as one evaluation (the callback sees its primal eps)."""
        fn = self.differentiable
        if fn is None:
            raise PndmError("forward-mode AD needs a PyTorch engine: use the finite-difference derivative "
                            "(option derivative=fd) for ONNX Runtime / TensorRT engines")
        t_batch = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        dt_batch = torch.full_like(t_batch, float(dt))
        with torch.enable_grad():
            primal, tangent = torch.func.jvp(fn, (x, t_batch), (dx, dt_batch))
        self._checked(primal.detach(), x, t)
        tangent = tangent.detach().to(device=x.device, dtype=x.dtype)
        if not bool(torch.isfinite(tangent).all()):
            raise PndmError(f"the model's derivative is NaN or Inf at t={float(t):g}: use derivative=fd")
        return tangent

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        t_batch = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        out = self._checked(self._eps(x, t_batch), x, t)
        if self._transform is not None:
            out = self._transform(x, t_batch, out)
        return out

    def _checked(self, out, x: torch.Tensor, t: float) -> torch.Tensor:
        """Check one evaluation's output, copy it, count it and report it to the callback."""
        index = self.count
        t_batch = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        where = f"at evaluation {index} (t={float(t):g})"
        if not isinstance(out, torch.Tensor):
            raise PndmError(f"eps returned {type(out).__name__} {where}, expected a Tensor shaped like x")
        if tuple(out.shape) != tuple(x.shape):
            raise PndmError(
                f"eps returned shape {tuple(out.shape)} {where}, expected x's shape {tuple(x.shape)}: "
                "the model must predict noise with the input's shape"
            )
        out = out.to(device=x.device, dtype=x.dtype, copy=True)
        if not bool(torch.isfinite(out).all()):
            raise PndmError(
                f"eps returned NaN or Inf {where}: the model or engine is numerically broken "
                "(check precision, weights, and inputs)"
            )
        self.count += 1
        if self._callback is not None:
            self._callback(x, t_batch, out, index)
        return out
