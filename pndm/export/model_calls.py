"""How the export calls a model: eps along solver trajectories, its native output for verification.

Engines output what the network predicts (``spec.prediction``: epsilon, v_prediction, sample); the
solvers that produce calibration trajectories need eps, converted by :func:`pndm.prediction.to_eps`
exactly as the runtime converts an engine's output. Calibration pairs then store the NATIVE output
(``pairs.eps`` holds it; for epsilon models the two are the same), which is what the exported graph
must reproduce. Class-conditional models (``spec.num_classes``): trajectory i is drawn for class
``i % num_classes``, and pair row r belongs to trajectory ``r % count`` (collect_pairs records all
``count`` trajectories of one solver call per model evaluation, in order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pndm.prediction import as_eps


class ModelCalls:
    """``eps`` for the solver, ``labels`` of calibration rows, ``store_native`` for the pairs."""

    def __init__(self, model: nn.Module, spec, count: int):
        from pndm.schedules import make_schedule

        self.model, self.spec, self.count = model, spec, count
        self.schedule = make_schedule(spec.schedule_spec)
        self.num_classes = spec.num_classes

    def labels(self, rows: int) -> torch.Tensor | None:
        """Class labels of ``rows`` consecutive calibration rows (None for unconditional models)."""
        if self.num_classes is None:
            return None
        return (torch.arange(rows) % self.count) % self.num_classes

    def native(self, x: torch.Tensor, t: torch.Tensor,
               class_labels: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x, t) if class_labels is None else self.model(x, t, class_labels)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps(x_t, t) for one solver call over the ``count`` trajectories (module doc)."""
        return self.eps_through(self.native)(x, t)

    def eps_through(self, native: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """eps(x_t, t) of another ``native(x, t, class_labels)`` of this model (an exported graph), with
        this model's prediction type, schedule and class of each row."""
        converted = as_eps(native, self.spec.prediction, self.schedule)

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            labels = None if self.num_classes is None else torch.arange(x.shape[0]) % self.num_classes
            return converted(x, t, labels)

        return eps

    def store_native(self, pairs, batch: int) -> None:
        """Replace ``pairs.eps`` by the native outputs at the pairs (a no-op for epsilon models)."""
        if self.spec.prediction == "epsilon":
            return
        from pndm.export.verify import evaluate

        pairs.eps = evaluate(self.native, pairs.x, pairs.t, batch, self.labels(len(pairs)))
