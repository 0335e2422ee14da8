"""What every engine is: an eps callable that knows its image shape, schedule, batch range and I/O spec.

The contract (docs/CONTRACTS.md): ``engine(x, t) -> eps`` with ``x`` (B, C, H, W) float32 and
``t`` (B,) float32 timestep indices in [0, T-1]; the result is float32 with ``x``'s shape.
:meth:`Engine.native` returns what the network itself predicts (``prediction``: epsilon,
v_prediction or sample); ``__call__`` converts it to eps with the engine's schedule
(:func:`pndm.prediction.to_eps`), the one place this happens for every backend.

Engines that carry native code (AOTInductor packages, TensorRT plans) load the bytes they checked:
:meth:`Engine.checked_bytes` reads the file once, compares its SHA-256 with the manifest's and applies
:mod:`pndm.trust` to that hash, so a file swapped after the check is never what runs.

Life cycle: a backend's :meth:`Engine._open` acquires what it runs on (a session, a deserialized
plan, a loaded package), :meth:`Engine._close` releases it. :func:`pndm.runtime.load_engine` returns
an opened engine; ``with load_engine(...) as engine:`` closes it at the end, and so does
:meth:`Engine.close`. The base class owns the I/O spec (names from the manifest), the checks of a
backend's tensor names against it, input validation, and the per-batch buffer cache: backends that
run on preallocated buffers (ONNX Runtime with I/O binding, TensorRT) return the same output tensor
on every call with the same batch size, so callers that keep an eps must copy it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from pndm.engine_format import CLASS_LABELS, IOSpec, Manifest
from pndm.errors import EngineError
from pndm.prediction import to_eps
from pndm.schedules import Schedule, ScheduleSpec, interpolate_log_alpha_bar, make_schedule


@dataclass(frozen=True)
class EngineInfo:
    """What the manifest (or the model spec) says about an engine."""

    path: str
    image_shape: tuple[int, int, int]
    schedule: ScheduleSpec
    batch_range: tuple[int, int]
    precision: str
    io: IOSpec
    manifest: Manifest | None = None
    sha256: str | None = None  # the manifest's hash of the file (None for a PyTorch model)
    prediction: str = "epsilon"  # what the network outputs (pndm.prediction)


class Engine:
    """Base class: validates a call against the engine's I/O spec and profile, then runs the backend."""

    backend = "base"

    def __init__(self, info: EngineInfo, device: torch.device, *, trust: bool = False):
        self.info = info
        self.trust = trust  # load a code-carrying file this machine did not build (pndm.trust)
        self.path = info.path
        self.image_shape = tuple(info.image_shape)
        self.batch_range = tuple(info.batch_range)
        self.precision = info.precision
        self.manifest = info.manifest
        self.io = info.io
        self.device = torch.device(device)
        self.prediction = info.prediction
        # The label of class-conditional calls that pass none (pndm-run --class-label); None: required.
        self.class_label: int | None = None
        self.schedule: Schedule = make_schedule(info.schedule)
        self._log_nodes: torch.Tensor | None = None  # log alpha_bar nodes on self.device, for to_eps
        self.dtypes: dict[str, torch.dtype] = {}  # the backend's tensor types, by I/O name
        self._buffers: dict[tuple[str, int], torch.Tensor] = {}
        self.is_open = False

    # -- life cycle -------------------------------------------------------------------------------
    def open(self) -> Engine:
        """Acquire the backend (idempotent); returns the engine."""
        if not self.is_open:
            self._open()
            self.is_open = True
        return self

    def close(self) -> None:
        """Release the backend and every buffer (idempotent); a closed engine refuses calls."""
        if self.is_open:
            self._buffers.clear()
            self._close()
            self.is_open = False

    def __enter__(self) -> Engine:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        """Backend-specific: load the file and check it against :attr:`io` (:meth:`check_names`)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Backend-specific: drop what :meth:`_open` acquired."""
        raise NotImplementedError

    # -- what backends share ------------------------------------------------------------------------
    def check_names(self, inputs: Iterable[str], outputs: Iterable[str]) -> None:
        """Refuse a backend file whose tensor names differ from the manifest's I/O spec."""
        inputs, outputs = sorted(inputs), sorted(outputs)
        if inputs != sorted(self.io.input_names) or outputs != [self.io.output_name]:
            raise EngineError(
                f"{self.path} has inputs {inputs} and outputs {outputs}, but its manifest names "
                f"{list(self.io.input_names)} -> {self.io.output_name}: the manifest does not belong to this "
                "file, re-export"
            )

    def check_image_dims(self, shape, what: str) -> None:
        """Refuse a backend tensor shape (batch, C, H, W; symbolic dims allowed) unlike the manifest's."""
        if len(shape) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(shape[1:], self.image_shape, strict=True)
        ):
            raise EngineError(
                f"{self.path}: {what} has shape {shape} but the manifest says (batch, {self.image_shape}): "
                "the manifest does not belong to this file, re-export"
            )

    def buffer(self, name: str, batch: int) -> torch.Tensor:
        """The persistent tensor for I/O ``name`` at ``batch`` (shape from the I/O spec, dtype from
        :attr:`dtypes`), allocated on first use on :attr:`device`."""
        key = (name, batch)
        if key not in self._buffers:
            spec = next(s for s in (*self.io.inputs, *self.io.outputs) if s.name == name)
            shape = [batch if d == "batch" else int(d) for d in spec.shape]
            self._buffers[key] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
        return self._buffers[key]

    def checked_bytes(self, kind: str) -> bytes:
        """The engine file's bytes, read once, whose SHA-256 is the manifest's and passes the trust rule
        for ``kind`` (:func:`pndm.trust.require_trusted`)."""
        from pndm.trust import require_trusted

        data = Path(self.path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.info.sha256:
            raise EngineError(
                f"{self.path} does not match the SHA-256 in its manifest: the file is truncated, corrupt "
                "or was replaced; re-export it with pndm-export build"
            )
        require_trusted(self.path, kind, digest, self.trust)
        return data

    def set_class_label(self, label: int | None) -> None:
        """Use ``label`` for every class-conditional call that passes no ``class_labels``; refuses a label
        for an unconditional model, and a conditional model without one."""
        num_classes = self.manifest.model.num_classes if self.manifest is not None else None
        conditional = CLASS_LABELS in self.io.input_names
        if label is not None and not conditional:
            raise EngineError(f"{self.path}: the model is unconditional: drop class_label=")
        if conditional and label is None:
            known = f" (0..{num_classes - 1})" if num_classes else ""
            raise EngineError(f"{self.path}: the model is class-conditional: pass class_label=K{known}")
        if label is not None and num_classes is not None and not 0 <= label < num_classes:
            raise EngineError(f"class_label {label} is outside the model's classes 0..{num_classes - 1}")
        self.class_label = label

    def check_batch(self, batch: int) -> None:
        """Raise an :class:`EngineError` naming the profile if ``batch`` is outside it."""
        lo, hi = self.batch_range
        if not lo <= batch <= hi:
            raise EngineError(
                f"batch size {batch} is outside the engine's profile [{lo}, {hi}] ({self.path}): "
                f"use a batch size between {lo} and {hi} (batch={hi}), or re-export with a wider batch range"
            )

    # -- calls --------------------------------------------------------------------------------------
    def native(
        self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network's own output (``prediction``) for validated inputs."""
        if not self.is_open:
            raise EngineError(f"{self.path}: the engine is closed; load it again")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise EngineError(
                f"input of shape {tuple(x.shape)} does not fit the engine's image shape {self.image_shape}"
            )
        batch = x.shape[0]
        if t.shape != (batch,):
            raise EngineError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        conditional = CLASS_LABELS in self.io.input_names
        if conditional and class_labels is None and self.class_label is not None:
            class_labels = torch.full((batch,), self.class_label, dtype=torch.int64)
        if conditional != (class_labels is not None):
            advice = "class-conditional: pass" if conditional else "unconditional: drop"
            raise EngineError(f"{self.path}: the model is {advice} class_labels")
        self.check_batch(batch)
        names = self.io.input_names
        inputs = {names[0]: x.to(self.device, torch.float32).contiguous(),
                  names[1]: t.to(self.device, torch.float32).contiguous()}
        if conditional:
            if class_labels.shape != (batch,):
                raise EngineError(f"class_labels must have shape ({batch},), got {tuple(class_labels.shape)}")
            inputs[names[2]] = class_labels.to(self.device, torch.int64).contiguous()
        return self.run(inputs)

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """eps: :meth:`native`, converted by :func:`pndm.prediction.to_eps` unless the model predicts eps."""
        native = self.native(x, t, class_labels)
        if self.prediction == "epsilon":
            return native
        if self._log_nodes is None:
            self._log_nodes = self.schedule.log_nodes.to(self.device)
        log_ab = interpolate_log_alpha_bar(self._log_nodes, t.to(self.device, torch.float64))
        return to_eps(native, x.to(self.device, torch.float32), log_ab, self.prediction)

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backend-specific forward pass on validated tensors already on :attr:`device`, keyed by the
        I/O spec's input names in order (float32 ``x``, ``t``; int64 ``class_labels``); returns float32."""
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-ready summary for run.json and the checker report."""
        return {
            "path": self.path,
            "backend": self.backend,
            "precision": self.precision,
            "device": str(self.device),
            "image_shape": list(self.image_shape),
            "schedule": self.schedule.name,
            "T": self.schedule.T,
            "batch_range": list(self.batch_range),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {self.precision}, {self.device})"
