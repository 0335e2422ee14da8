"""Scoring a set of samples against real images: features, cached reference statistics, the baseline.

Feature networks (``features``):
- ``judge``: pndm's shipped feature judge (:mod:`pndm.scoring.judge`), 128-d, for 28x28 grey data
  (MNIST digits, Fashion-MNIST); other images are converted to grey and resized to 28x28;
- ``inception``: FID's Inception-v3 (:mod:`pndm.scoring.inception`), 2048-d, from a weights file.
Images: a folder of image files of one size (a ``pndm-run sample`` or ``interpolate`` folder: pndm's
``grid.png``, ``trajectory.png`` and ``strip.png`` are skipped), an ``.npz`` (``images`` uint8), an
IDX file, or a named data set (``mnist``, ``fashion-mnist``).

The reference's features are cached in ``$PNDM_CACHE_DIR/scoring`` as ``.npz`` (``features``,
``mu``, ``sigma``), keyed by the feature network's weights and the reference's pixels (where that
folder cannot be written, a note says so and scoring goes on without the cache); a reference
can also be an ``.npz`` of statistics (``mu``, ``sigma``, as pytorch-fid writes), then without
baseline or precision/recall. The real-vs-real baseline is the same distance between two disjoint
parts of the reference: n images (n = the number of samples, at most half the reference) drawn with
a fixed seed, against the rest. A Frechet distance shrinks as n grows, so compare scores only at
equal n, and read a score against its baseline.
"""

from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pndm.errors import PndmError, os_error_message
from pndm.scoring.frechet import PR_NEIGHBOURS, frechet_distance, precision_recall, statistics

FEATURES = ("judge", "inception")
PR_MAX_REFERENCE = 5000
BASELINE_SEED = 0


def _cache_dir() -> Path:
    from pndm.trust import cache_root

    return cache_root() / "scoring"


@dataclass
class Featurizer:
    """A feature network: uint8 (N, C, H, W) images -> (N, D) float64 features."""

    name: str
    net: torch.nn.Module
    weights_sha256: str
    batch: int

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            out.append(self.net.features(self._prepare(chunk)).double().numpy())
        return np.concatenate(out)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        from pndm.train.data import fit_resolution, to_model_range

        if self.name == "judge":
            from pndm.scoring.judge import IMAGE_SIZE

            return to_model_range(fit_resolution(images, IMAGE_SIZE, 1, resize=True))
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
        return rgb.float() / 255.0  # pytorch-fid's ToTensor of an RGB image


def make_featurizer(features: str = "judge", inception: str | Path | None = None) -> Featurizer:
    """The ``features`` network; ``inception`` is the FID weights file (required for ``inception``)."""
    from pndm.fileio import sha256_file

    if features == "judge":
        from pndm.scoring.judge import JUDGE_WEIGHTS, load_judge

        return Featurizer("judge", load_judge(), sha256_file(JUDGE_WEIGHTS), batch=500)
    if features == "inception":
        from pndm.scoring.inception import WEIGHTS_NAME, WEIGHTS_URL, load_inception

        if inception is None:
            raise PndmError(f"--features inception needs --inception FILE: {WEIGHTS_NAME} from {WEIGHTS_URL} "
                            "(pndm never downloads it)")
        return Featurizer("inception", load_inception(inception), sha256_file(inception), batch=50)
    raise PndmError(f"unknown features {features!r}: choose one of {', '.join(FEATURES)}")


def _read_folder(folder: Path, size: int | None) -> torch.Tensor:
    """A folder's images (pndm's pictures of several images left out), each resized to ``size`` square."""
    from pndm.images import COLLAGE_NAMES, IMAGE_SUFFIXES, read_image_files

    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in COLLAGE_NAMES)
    if not files:
        raise PndmError(f"{folder}: no images in this folder")
    return read_image_files(files, str(folder), hint="; or pass --resize N (e.g. 299 for inception)",
                            size=None if size is None else (size, size))


def resized(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) images resized to ``size`` x ``size`` (bilinear, antialiased); None: as they are."""
    from pndm.train.data import fit_resolution

    return images if size is None else fit_resolution(images, size, images.shape[1], resize=True)


def load_image_set(source: str | Path, size: int | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) images from a folder, an .npz, an IDX file or a named data set; ``size``: each
    resized to ``size`` x ``size`` (bilinear, antialiased) as it is read, so a folder may mix sizes."""
    from pndm.train.data import load_images

    path = Path(source)
    if path.is_dir():
        images = _read_folder(path, size)
    else:
        try:
            images = load_images(str(source))
        except PndmError as exc:  # the training reader names its option --data; here it is a path
            raise PndmError(str(exc).replace("--data ", "", 1)) from None
        images = resized(images, size)
    if len(images) < 2:
        raise PndmError(f"{source}: {len(images)} image(s); a Frechet distance needs at least 2")
    return images


def _is_statistics_file(path: Path) -> bool:
    """An .npz holding ``mu`` and ``sigma``; one of them without the other (and no ``images``) is refused.
    One that cannot be read is left to :func:`load_image_set`, whose error names the problem."""
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.keys())
    except (OSError, ValueError):
        return False
    found = keys & {"mu", "sigma"}
    if len(found) == 1 and "images" not in keys:
        missing = ({"mu", "sigma"} - found).pop()
        raise PndmError(f"{path}: a statistics .npz holds mu and sigma, this one has no {missing}: save both "
                        "(numpy.savez(path, mu=mu, sigma=sigma))")
    return len(found) == 2


@dataclass
class Reference:
    """Reference statistics, and the features themselves when the reference was a set of images."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None
    source: str
    cache: str | None


def reference_statistics(featurizer: Featurizer, source: str | Path, size: int | None = None) -> Reference:
    """The reference's features and statistics, from the cache when the same pixels were scored before;
    ``size``: its images resized as :func:`load_image_set` does (statistics files have none)."""
    from pndm.fileio import atomic_path

    path = Path(source)
    if _is_statistics_file(path):
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = data["mu"], data["sigma"]
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise PndmError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
        return Reference(mu, sigma, None, str(source), None)
    images = load_image_set(source, size)
    key = hashlib.sha256(featurizer.weights_sha256.encode() + images.numpy().tobytes()).hexdigest()[:20]
    cache = _cache_dir() / f"{featurizer.name}-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return Reference(data["mu"], data["sigma"], data["features"], str(source), str(cache))
    features = featurizer(images)
    mu, sigma = statistics(features)
    features = features.astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, mu=mu, sigma=sigma)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_bytes(buffer.getvalue())
    except OSError as error:  # the cache only saves time
        print(f"note: the scoring cache in {cache.parent} cannot be used ({os_error_message(error)}); "
              "scoring without it. Set PNDM_CACHE_DIR to a writable folder to cache", file=sys.stderr)
        return Reference(mu, sigma, features, str(source), None)
    return Reference(mu, sigma, features, str(source), str(cache))


def _pr_reference(features: np.ndarray) -> np.ndarray:
    if len(features) <= PR_MAX_REFERENCE:
        return features
    order = np.random.default_rng(BASELINE_SEED).permutation(len(features))
    return features[order[:PR_MAX_REFERENCE]]


def compare(samples: np.ndarray, reference: Reference, with_pr: bool = True) -> dict:
    """Frechet distance (+ precision/recall when the reference has features) of sample features."""
    mu, sigma = statistics(samples)
    if mu.shape != reference.mu.shape:
        raise PndmError(f"the reference statistics have {reference.mu.shape[0]} features, these features "
                        f"have {mu.shape[0]}: score with the same --features the reference was made with")
    result = {"fd": frechet_distance(mu, sigma, reference.mu, reference.sigma), "num_samples": len(samples)}
    if with_pr and reference.features is not None:
        result.update(precision_recall(samples, _pr_reference(reference.features)))
    return result


def real_vs_real(reference: Reference, n: int, with_pr: bool = True) -> dict | None:
    """The same measures between n reference images and the rest of the reference (the baseline)."""
    if reference.features is None:
        return None
    features = reference.features
    if with_pr and len(features) // 2 <= PR_NEIGHBOURS:
        k = PR_NEIGHBOURS
        raise PndmError(f"the reference has {len(features)} images: the real-vs-real baseline splits it in "
                        f"two, and precision and recall need more than {k} images in each part; use a "
                        f"reference of at least {2 * (k + 1)} images")
    n = min(n, len(features) // 2)
    order = np.random.default_rng(BASELINE_SEED).permutation(len(features))
    part, rest = features[order[:n]], features[order[n:]]
    mu, sigma = statistics(rest)
    held_out = Reference(mu, sigma, rest, reference.source, None)
    return {**compare(part, held_out, with_pr), "num_reference": len(rest)}


def score_images(images: torch.Tensor, reference: Reference, featurizer: Featurizer, with_pr: bool = True
                 ) -> dict:
    """The full report for uint8 sample images: score, baseline and their ratio."""
    result = compare(featurizer(images), reference, with_pr)
    baseline = real_vs_real(reference, len(images), with_pr)
    return {
        "features": featurizer.name,
        **result,
        "num_reference": None if reference.features is None else len(reference.features),
        "real_vs_real": baseline,
        "fd_over_baseline": result["fd"] / baseline["fd"] if baseline and baseline["fd"] > 0 else None,
        "reference": reference.source,
        "reference_cache": reference.cache,
    }
