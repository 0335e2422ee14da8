"""Helpers for the runtime tests: a tiny DDPM UNet exported to ONNX with a manifest beside it.

Written independently of ``pndm-export`` (which has its own tests) so the runtime can be tested
on a small, fast engine: 16x16 images, ch=32, one res block per level, batch range 1..8.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from pndm.fileio import sha256_file
from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig

TINY = DDPMUNetConfig(
    ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, dropout=0.0
)
BATCH = {"min": 1, "opt": 2, "max": 8}


def tiny_model(seed: int = 0) -> DDPMUNet:
    torch.manual_seed(seed)
    return DDPMUNet(TINY).eval()


def export_tiny_onnx(model: torch.nn.Module, path: Path) -> None:
    """TorchScript-based ONNX export (fast: ~2 s) with a dynamic batch axis."""
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding notes
        _export(model, x, t, path)


def _export(model, x, t, path):
    torch.onnx.export(
        model,
        (x, t),
        str(path),
        input_names=["x", "t"],
        output_names=["eps"],
        dynamo=False,
        dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}},
    )


def write_manifest(
    folder: Path, engines: dict[str, dict], reference: str | None = "reference.safetensors"
) -> dict:
    """A manifest in the docs/CONTRACTS.md format for the engine files in ``folder``."""
    manifest = {
        "format": "pndm-engine/1",
        "model": {
            "architecture": "ddpm",
            "config": TINY.to_dict(),
            "source": {"kind": "random", "name": None, "path": None, "sha256": None},
        },
        "image": {"channels": 3, "height": 16, "width": 16},
        "schedule": {"name": "linear", "T": 1000},
        "io": {
            "inputs": [
                {"name": "x", "dtype": "float32", "shape": ["batch", 3, 16, 16]},
                {"name": "t", "dtype": "float32", "shape": ["batch"]},
            ],
            "outputs": [{"name": "eps", "dtype": "float32", "shape": ["batch", 3, 16, 16]}],
        },
        "batch": BATCH,
        "engines": {name: {**entry, "sha256": sha256_file(folder / name)} for name, entry in engines.items()},
        "versions": {"pndm": "0.1.0", "torch": torch.__version__},
    }
    if reference:
        manifest["reference"] = reference
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def make_engine_dir(folder: Path) -> Path:
    """unet.onnx (fp32) + reference.safetensors (the same weights) + manifest.json in ``folder``."""
    from pndm.models import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    export_tiny_onnx(model, folder / "unet.onnx")
    save_checkpoint(
        folder / "reference.safetensors",
        model.state_dict(),
        {"architecture": "ddpm", "model": TINY.to_dict(), "diffusion": {"schedule": "linear", "T": 1000}},
    )
    write_manifest(folder, {"unet.onnx": {"kind": "onnx", "precision": "fp32", "opset": 17}})
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; on this shared 2-core machine two OpenMP threads can
    be 100x slower when other processes hold the cores. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
