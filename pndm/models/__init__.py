"""pndm.models: the DDPM / iDDPM UNets and safe loading of original, diffusers and pndm checkpoints."""

from pndm.models.architectures import build_model
from pndm.models.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["build_model", "load_checkpoint", "save_checkpoint"]
