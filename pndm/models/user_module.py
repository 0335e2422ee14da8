"""The user's own network: ``MODULE:FACTORY`` returning an ``nn.Module`` with ``forward(x, t)``.

``MODULE`` is an importable module name (``mypkg.nets``) or a ``.py`` file path; ``FACTORY`` a
callable in it taking no arguments. Importing it runs the user's code because the user named it
(no pickle is involved); weights, when given, come from a ``.safetensors`` file (no code runs).
The module must follow the eps contract's shapes: ``x`` (B, C, H, W) float32, ``t`` (B,) float32
timestep indices in [0, T-1] (fractional allowed), plus int64 ``class_labels`` (B,) when
``num_classes`` is set; the output has ``x``'s shape and is the model's native prediction
(``prediction``: epsilon, v_prediction or sample). A forward that returns more than the prediction
is taken as it is written: a tuple or list gives its element 0 (diffusers' ``return_dict=False``
convention), a dict or output object its ``sample``, else its one tensor of ``x``'s shape
(:class:`PredictionOutput`). :func:`load_module` probes this once and names the problem and the
fix when it does not hold.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pndm.errors import CheckpointError, PndmError
from pndm.fileio import sha256_file
from pndm.models.checkpoint import read_safetensors
from pndm.models.spec import ModelSpec
from pndm.models.state_dicts import load_into, strip_module_prefix
from pndm.prediction import check_prediction
from pndm.schedules import ScheduleSpec

INIT_SEED = 0
FORMAT_HINT = "give MODULE:FACTORY, e.g. mypkg.nets:make_unet or path/to/nets.py:make_unet"


def parse_module_spec(spec: str) -> tuple[str, str]:
    """(module, factory) of ``MODULE:FACTORY``."""
    module, sep, factory = spec.rpartition(":")
    if not sep or not module or not factory.isidentifier():
        raise PndmError(f"--module {spec!r}: not MODULE:FACTORY; {FORMAT_HINT}")
    return module, factory


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def canonical_module_spec(spec: str) -> str:
    """The spec with a ``.py`` path made absolute (what the manifest records)."""
    module, factory = parse_module_spec(spec)
    if _is_path(module):
        module = str(Path(module).expanduser().resolve())
    return f"{module}:{factory}"


def _import(module: str, spec: str):
    if _is_path(module):
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise PndmError(f"--module {spec!r}: no such file {path}; {FORMAT_HINT}")
        name = "pndm_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = mod
        try:
            loader_spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
        return mod
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise PndmError(f"--module {spec!r}: cannot import {exc.name!r}; install it, put it on PYTHONPATH, "
                        "or give the .py file's path") from None


def build_user_module(spec: str) -> nn.Module:
    """Import ``MODULE`` and call ``FACTORY()``; the result must be an ``nn.Module``."""
    module, factory_name = parse_module_spec(spec)
    try:
        mod = _import(module, spec)
    except PndmError:
        raise
    except Exception as exc:  # the user's code failed while importing: say where, in one line
        raise PndmError(f"--module {spec!r}: importing {module} raised {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}; fix the module") from None
    factory = getattr(mod, factory_name, None)
    if not callable(factory):
        raise PndmError(f"--module {spec!r}: {module} has no callable {factory_name!r}; "
                        "name a function or class that returns the nn.Module")
    try:
        with torch.random.fork_rng(devices=[]):  # a reproducible initialisation when no --weights are given
            torch.manual_seed(INIT_SEED)
            model = factory()
    except Exception as exc:
        raise PndmError(f"--module {spec!r}: {factory_name}() raised {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}; it must build the model "
                        "with no arguments") from None
    if not isinstance(model, nn.Module):
        raise PndmError(f"--module {spec!r}: {factory_name}() returned {type(model).__name__}, not a "
                        "torch.nn.Module; return the network")
    return model


def _check_signature(model: nn.Module, spec: str, num_classes: int | None, time: str = "t") -> None:
    """``forward`` must name its inputs (x, t[, class_labels]) as positional parameters: torch.export
    maps the inputs to them by position, which ``*args``/``**kwargs`` do not allow."""
    wanted = 3 if num_classes else 2
    params = list(inspect.signature(model.forward).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    call = f"forward(x, {time}, class_labels)" if num_classes else f"forward(x, {time})"
    names = ", ".join({p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name for p in params)
    what = "t (B,) float32 timesteps" if time == "t" else "sigma (B,) float32 noise levels"
    if not num_classes and len(required) == 3:
        raise PndmError(f"--module {spec!r}: forward({names}) takes {required[2].name}: pass --num-classes K "
                        "(the number of classes)")
    if len(positional) < wanted and any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise PndmError(f"--module {spec!r}: forward({names}) does not name its inputs, which torch.export "
                        f"needs; define {call} (x (B,C,H,W) float32, {what})")
    if len(positional) < wanted or len(required) > wanted:
        raise PndmError(f"--module {spec!r}: forward({names}) does not take ({call[8:-1]}); define {call} "
                        f"(x (B,C,H,W) float32, {what})")


class PredictionOutput:
    """Forward hook that hands on the prediction when ``forward`` returns more than one tensor.

    A hook, not a wrapper module, so that the network's layer names (``--keep-float``, the checker's
    per-layer tables) stay the user's own. It picks by the structure of the output, which is fixed
    for a traced graph: a tuple or list, element 0; a mapping or an object with a ``sample``
    attribute (diffusers' ``UNet2DOutput``), its ``sample``, else the one entry of ``x``'s shape.
    ``picked`` says what it took (``None`` while forward returns a tensor)."""

    def __init__(self, spec: str):
        self.spec = spec
        self.picked: str | None = None

    def __call__(self, module: nn.Module, inputs: tuple, output):
        if isinstance(output, torch.Tensor):
            return output
        shape = inputs[0].shape
        picked, prediction = _prediction_in(output, shape)
        if not (isinstance(prediction, torch.Tensor) and prediction.shape == shape):
            raise PndmError(
                f"--module {self.spec!r}: forward returned {_described(output)} for x {tuple(shape)}; "
                "it must return one tensor of x's shape (the model's eps, v or x0 prediction), or a tuple "
                "with it first, or a dict or output with it as 'sample'")
        self.picked = picked
        return prediction


def _prediction_in(output, shape: torch.Size) -> tuple[str | None, object]:
    """(what, value): element 0 of a tuple or list; a mapping's or object's ``sample``, else its one
    tensor of ``shape``; (None, None) when there is none."""
    if isinstance(output, (tuple, list)):
        return ("element 0", output[0]) if output else (None, None)
    entries = dict(output) if isinstance(output, Mapping) else dict(getattr(output, "__dict__", {}))
    if "sample" in entries:
        return "'sample'", entries["sample"]
    fits = [(f"{key!r}", value) for key, value in entries.items()
            if isinstance(value, torch.Tensor) and value.shape == shape]
    return fits[0] if len(fits) == 1 else (None, None)


def _described(output) -> str:
    if isinstance(output, torch.Tensor):
        return str(tuple(output.shape))
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)}"
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {', '.join(map(repr, output))}"
    return type(output).__name__


def probe(model: nn.Module, spec: str, image_shape: tuple[int, int, int], num_classes: int | None
          ) -> str | None:
    """Call the model (eps contract) once on a batch of 2 and check the output's type and shape; a
    note when the prediction is taken out of a larger output (:class:`PredictionOutput`)."""
    x = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0))
    args = (x, torch.tensor([0.0, 500.5]))
    if num_classes:
        args += (torch.tensor([0, num_classes - 1]),)
    try:
        with torch.no_grad():
            out = model(*args)
    except PndmError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PndmError(f"--module {spec!r}: forward on x {tuple(x.shape)}, t (2,) raised "
                        f"{type(exc).__name__}: "
                        f"{first}; check --image-shape and that forward takes (x, t)") from None
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise PndmError(f"--module {spec!r}: forward returned {_described(out)} for x {tuple(x.shape)}; it "
                        "must return one tensor of x's shape (the model's eps, v or x0 prediction)")
    picked = next((hook.picked for hook in _prediction_hooks(model) if hook.picked), None)
    return f"forward returns more than the prediction: pndm takes its {picked}" if picked else None


def _prediction_hooks(model: nn.Module) -> list[PredictionOutput]:
    return [hook for module in model.modules() for hook in module._forward_hooks.values()
            if isinstance(hook, PredictionOutput)]


def load_module(spec: str, *, image_shape: tuple[int, int, int], weights: str | Path | None = None,
                schedule: ScheduleSpec | None = None, prediction: str | None = None,
                num_classes: int | None = None, denoiser: str = "eps", sigma_min: float | None = None,
                sigma_max: float | None = None) -> tuple[nn.Module, ModelSpec]:
    """(model in eval mode, ModelSpec) for the user's ``MODULE:FACTORY`` (module doc).

    ``weights``: a ``.safetensors`` state dict loaded strictly into the built module (else the
    factory's own initialisation, under ``torch.manual_seed(0)`` so it can be rebuilt, is exported).
    ``schedule``: the training schedule (default linear 1e-4..0.02, T=1000). ``prediction``: what
    forward returns (default epsilon). ``num_classes``: set for class-conditional models.

    ``denoiser="sigma"``: the module is an EDM-style ``forward(x, sigma[, class_labels]) -> D``
    (:mod:`pndm.models.sigma_denoiser`); its schedule comes from the sigma range (the module's own
    ``sigma_min``/``sigma_max`` attributes clamped to EDM's 0.002..80, or the arguments), and its
    prediction is ``sample``.
    """
    if prediction is not None:
        check_prediction(prediction)
    if denoiser not in ("eps", "sigma"):
        raise PndmError(f"unknown denoiser kind {denoiser!r}; choose eps (forward(x, t)) or sigma "
                        "(forward(x, sigma))")
    if denoiser == "sigma" and (schedule is not None or prediction not in (None, "sample")):
        raise PndmError("a sigma denoiser predicts x0 (sample) over its sigma range: drop --schedule/"
                        "--prediction, give --sigma-min/--sigma-max")
    if denoiser != "sigma" and (sigma_min is not None or sigma_max is not None):
        raise PndmError("--sigma-min/--sigma-max need --denoiser sigma (they set a sigma denoiser's noise "
                        "range): add it, or drop them")
    if len(image_shape) != 3 or not all(isinstance(s, int) and s > 0 for s in image_shape):
        raise PndmError(f"image shape {image_shape!r} is not C,H,W with positive integers; e.g. 3,32,32")
    if num_classes is not None and num_classes < 1:
        raise PndmError(f"--num-classes {num_classes}: must be a positive integer")
    canonical = canonical_module_spec(spec)
    model = build_user_module(spec)
    files, sha, path = {}, None, None
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        if path.suffix != ".safetensors":
            raise CheckpointError(f"--weights {weights}: give a .safetensors file (torch pickles can carry "
                                  "code)")
        load_into(model, strip_module_prefix(read_safetensors(path)[0]), path, f"module {canonical}",
                  mismatch="the module's parameters do not match these weights")
        sha = sha256_file(path)
        files[str(path)] = sha
    module = parse_module_spec(canonical)[0]
    if _is_path(module):
        files[module] = sha256_file(module)
    model = model.float().eval()
    model.register_forward_hook(PredictionOutput(spec))
    config: dict = {"module": canonical}
    if denoiser == "sigma":
        from pndm.models.sigma_denoiser import wrap_sigma_network

        _check_signature(model, spec, num_classes, time="sigma")
        model, schedule, sigma_cfg = wrap_sigma_network(model, num_classes, sigma_min, sigma_max)
        config.update(sigma_cfg)
        prediction = "sample"
    else:
        prediction = prediction or "epsilon"
        _check_signature(model, spec, num_classes)
    note = probe(model, spec, tuple(image_shape), num_classes)
    schedule = schedule or ScheduleSpec("linear")
    described = f"module {canonical}" + (f" with weights {path}" if path else " (its own initialisation)")
    model_spec = ModelSpec(
        architecture="module", config=config, image_shape=tuple(image_shape),
        schedule=schedule.name, T=schedule.T, schedule_spec=schedule, source=described, source_kind="module",
        sha256=sha, path=str(Path(path).resolve()) if path else None, prediction=prediction,
        num_classes=num_classes, files=files, module=canonical, notes=(note,) if note else (),
    )
    return model, model_spec
