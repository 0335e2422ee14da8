"""``python -m pndm.train`` (and ``torchrun -m pndm.train``): the same as ``pndm-train``."""

from pndm.cli import train_cli

train_cli()
