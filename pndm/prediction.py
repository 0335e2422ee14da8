"""What a model predicts, and its conversion to eps: the one place it happens.

Engines export and run the model's NATIVE output (the checker compares what the model
outputs); the solvers only see eps, so :class:`pndm.runtime.engines.base.Engine` converts every
output with :func:`to_eps` using the engine's schedule. With ``x_t = sqrt(ab) x0 + sqrt(1-ab) eps``
(Ho et al. 2020, eq. 4), ``ab = alpha_bar(t)``:

* ``epsilon``: the output is eps.
* ``v_prediction`` (Salimans & Ho 2022, sec. 4): ``v = sqrt(ab) eps - sqrt(1-ab) x0``, so
  ``eps = sqrt(ab) v + sqrt(1-ab) x_t``.
* ``sample`` (x0-prediction): ``eps = (x_t - sqrt(ab) x0) / sqrt(1-ab)``.

Numerics near ab -> 1 (t -> 0): the coefficients are computed in float64 from log alpha_bar, with
``1 - ab = -expm1(log ab)`` (no cancellation; in float32 ``1 - ab`` at ab = 0.9999 keeps only 3
digits), then applied in float32. Models are only evaluated at t in [0, T-1], where
``1 - ab >= beta_0 > 0``, so the x0 conversion never divides by zero; it does amplify the model's
own x0 error by ``sqrt(ab / (1-ab))`` (100x at t = 0 of the linear schedule), which is inherent
to x0-prediction (diffusers' schedulers do the same conversion) and why the checker compares
native outputs.
"""

from __future__ import annotations

import torch

from pndm.errors import PndmError

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def check_prediction(prediction: str) -> str:
    """``prediction`` if it is one of :data:`PREDICTIONS`; else a one-line PndmError."""
    if prediction not in PREDICTIONS:
        raise PndmError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction


def to_eps(output: torch.Tensor, x_t: torch.Tensor, log_alpha_bar: torch.Tensor,
           prediction: str) -> torch.Tensor:
    """eps from a model's native ``output`` at ``x_t`` (B, C, H, W); ``log_alpha_bar`` (B,): module doc."""
    if check_prediction(prediction) == "epsilon":
        return output
    log_ab = log_alpha_bar.to(torch.float64)
    sqrt_ab = torch.exp(0.5 * log_ab)  # sqrt(ab)
    sqrt_one_minus = torch.sqrt(-torch.expm1(log_ab))  # sqrt(1 - ab), exact near ab = 1
    shape = (-1,) + (1,) * (output.dim() - 1)
    if prediction == "v_prediction":  # eps = sqrt(ab) v + sqrt(1-ab) x_t
        a, b = sqrt_ab, sqrt_one_minus
        return a.to(output).view(shape) * output + b.to(output).view(shape) * x_t
    # sample: eps = (x_t - sqrt(ab) x0) / sqrt(1-ab) = x_t / sqrt(1-ab) - sqrt(ab)/sqrt(1-ab) x0
    a, b = 1 / sqrt_one_minus, sqrt_ab / sqrt_one_minus
    return a.to(output).view(shape) * x_t - b.to(output).view(shape) * output


def training_target(prediction: str, x0: torch.Tensor, noise: torch.Tensor,
                    alpha_bar: torch.Tensor) -> torch.Tensor:
    """What a model that outputs ``prediction`` is trained to output at ``x_t = sqrt(ab) x0 +
    sqrt(1-ab) noise`` (``alpha_bar`` broadcastable to x0): noise (Ho et al. 2020, eq. 14), v =
    sqrt(ab) noise - sqrt(1-ab) x0 (Salimans & Ho 2022, sec. 4) or x0; :func:`to_eps` inverts it."""
    if check_prediction(prediction) == "epsilon":
        return noise
    if prediction == "v_prediction":
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    return x0


def as_eps(model, prediction: str, schedule):
    """An eps callable ``eps(x, t, *class_labels)`` around a model that outputs ``prediction``
    (a :class:`pndm.schedules.Schedule` gives alpha_bar); the model itself for epsilon models."""
    if check_prediction(prediction) == "epsilon":
        return model

    def eps(x: torch.Tensor, t: torch.Tensor, *class_labels: torch.Tensor) -> torch.Tensor:
        return to_eps(model(x, t, *class_labels), x, schedule.log_alpha_bar(t), prediction)

    return eps
