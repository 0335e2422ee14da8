"""``pndm-run check --layerwise``: find the first layer where the fp16 ONNX leaves the fp32 ONNX.

Both graphs are run by Polygraphy's ONNX Runtime runner with every intermediate tensor marked as
an output (``ModifyOutputs(..., outputs=MARK_ALL)``), on the same real (x_t, t) pair taken from
the reference's trajectory. Tensors present in both graphs under the same name and shape are
compared in the fp16 graph's topological order; the first whose relative L2 error exceeds the
tolerance is named. Graph optimizations are off so the tensors are the exported ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pndm.errors import EngineError
from pndm.metrics import eps_errors
from pndm.runtime.engines.base import Engine


def _run_all_tensors(path: Path, feed: dict) -> tuple[dict, list[str]]:
    """Every tensor of the graph at ``path`` on ``feed``, and the tensor names in node order."""
    import onnxruntime as ort

    try:
        from polygraphy import constants
        from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    except ImportError as e:
        raise EngineError("layerwise=True needs Polygraphy: pip install 'pndm[trt]' (or polygraphy)") from e

    marked = ModifyOutputs(
        OnnxFromPath(str(path), external_data_dir=str(path.parent)), outputs=constants.MARK_ALL
    )
    graph = marked()
    order = [name for node in graph.graph.node for name in node.output if name]
    session = SessionFromOnnx(
        BytesFromOnnx(graph),
        providers=["CPUExecutionProvider"],
        graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    )
    with OnnxrtRunner(session) as runner:
        outputs = runner.infer(feed)
    return dict(outputs), order


def compare_layers(
    candidate: Path, reference: Path, x: torch.Tensor, t: torch.Tensor, *, tolerance: float
) -> dict:
    """Per-tensor relative L2 / max abs of the ``candidate`` graph against ``reference``.

    Returns a JSON-ready dict; ``first_divergent`` is the first tensor over ``tolerance`` (or None).
    """
    feed = {"x": x.float().cpu().numpy(), "t": t.float().cpu().numpy()}
    cand, order = _run_all_tensors(Path(candidate), feed)
    ref, _ = _run_all_tensors(Path(reference), feed)
    layers = []
    for name in order:
        if name not in ref or name not in cand:
            continue
        c, r = torch.tensor(cand[name]), torch.tensor(ref[name])
        if c.shape != r.shape or not (c.is_floating_point() and r.is_floating_point()) or not c.numel():
            continue
        rel, max_abs = eps_errors(c, r)
        layers.append({"tensor": name, "rel_l2": rel, "max_abs": max_abs})
    first = next((layer for layer in layers if not layer["rel_l2"] <= tolerance), None)
    return {
        "candidate": str(candidate),
        "reference": str(reference),
        "tolerance": tolerance,
        "compared": len(layers),
        "candidate_tensors": len(order),
        "first_divergent": first,
        "worst": sorted(layers, key=lambda layer: -layer["rel_l2"])[:5],
        "layers": layers,
    }


def fp32_onnx_for(candidate: Engine, reference: str | None) -> Path:
    """The fp32 ONNX to compare against: ``--reference`` if it is one, else ``unet.onnx`` of the manifest."""
    if reference and Path(reference).suffix == ".onnx":
        return Path(reference)
    engines = candidate.manifest.engines if candidate.manifest else {}
    for name, entry in engines.items():
        if entry.kind == "onnx" and entry.precision == "fp32":
            return Path(candidate.path).parent / name
    raise EngineError("layerwise=True needs an fp32 ONNX to compare with: pass reference=unet.onnx")


def layerwise_graphs(candidate: Engine, reference: str | None) -> tuple[Path, Path]:
    """(candidate ONNX, fp32 ONNX) that ``--layerwise`` compares, checked before the check runs: the
    candidate must be an ONNX graph other than the fp32 one."""
    if candidate.backend != "onnxruntime":
        raise EngineError(
            f"layerwise=True compares ONNX graphs, but {candidate.path} is a {candidate.backend} engine: "
            "check unet.fp16.onnx instead"
        )
    graphs = Path(candidate.path), fp32_onnx_for(candidate, reference)
    if graphs[0].resolve() == graphs[1].resolve():
        raise EngineError(
            f"layerwise=True compares a reduced-precision graph with the fp32 one, and {graphs[0]} is the "
            "fp32 graph itself: check unet.fp16.onnx instead"
        )
    return graphs


def format_layerwise(result: dict) -> str:
    """The lines ``pndm-run check --layerwise`` prints."""
    lines = [
        "",
        f"layerwise: {result['compared']} of {result['candidate_tensors']} tensors of {result['candidate']} "
        f"matched by name in {result['reference']}",
    ]
    first = result["first_divergent"]
    if first is None:
        lines.append(f"  no tensor exceeds relative L2 {result['tolerance']:g}")
    else:
        lines.append(
            f"  first divergent tensor: {first['tensor']} (rel L2 {first['rel_l2']:.3e}, max abs "
            f"{first['max_abs']:.3e} > tolerance {result['tolerance']:g})"
        )
    lines.append("  worst tensors:")
    lines += [
        f"    {w['tensor']:<48} rel L2 {w['rel_l2']:.3e}  max abs {w['max_abs']:.3e}" for w in result["worst"]
    ]
    return "\n".join(lines)
