"""pndm.models: the DDPM / iDDPM UNets and safe loading of original, diffusers and pndm checkpoints."""

from pndm.models.architectures import build_model
from pndm.models.checkpoint import load_checkpoint, save_checkpoint
from pndm.models.loading import UntrainedModelWarning, load, load_architecture
from pndm.models.registry import find_weights, list_models, weights_dir
from pndm.models.spec import ModelSpec
from pndm.models.user_module import load_module

__all__ = [
    "ModelSpec",
    "UntrainedModelWarning",
    "build_model",
    "find_weights",
    "list_models",
    "load",
    "load_architecture",
    "load_checkpoint",
    "load_module",
    "save_checkpoint",
    "weights_dir",
]
