"""Feature statistics and the distances between two sets of features.

Frechet distance between Gaussians fitted to the two feature sets (Dowson & Landau 1982; FID,
Heusel et al. 2017, Eq. 6):
    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).
Tr((S_1 S_2)^{1/2}) is the sum of the square roots of the eigenvalues of S_1 S_2, which are those
of the symmetric positive semi-definite A = S_1^{1/2} S_2 S_1^{1/2}; computing them with a symmetric
eigensolver (instead of a general matrix square root) stays real and stable when the covariances
are singular (fewer images than feature dimensions).

Precision and recall (Kynkaanniemi et al. 2019, Eqs. 1-3): each set's manifold is the union of balls
around its points with radius the distance to the point's k-th nearest neighbour in the same set;
precision = share of samples inside the reference manifold, recall = share of references inside
the samples' manifold.
"""

from __future__ import annotations

import numpy as np

from pndm.errors import PndmError

PR_NEIGHBOURS = 3


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as numpy's ``cov``) of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(s)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 between N(mu1, sigma1) and N(mu2, sigma2) (the module docstring's formula)."""
    diff = mu1 - mu2
    root = _psd_sqrt(sigma1)
    eigenvalues = np.linalg.eigvalsh(root @ sigma2 @ root)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of a and b."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def _radii(points: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise(points, points)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(samples: np.ndarray, reference: np.ndarray, k: int = PR_NEIGHBOURS) -> dict[str, float]:
    """Improved precision and recall (the module docstring) of ``samples`` against ``reference``."""
    for points, what, fix in ((samples, "samples", f"score at least {k + 1} images"),
                              (reference, "reference images", f"use a reference of at least {k + 1} images")):
        if len(points) <= k:
            raise PndmError(f"precision and recall (k={k} nearest neighbours) need more than {k} images in "
                            f"each set, got {len(points)} {what}; {fix}")
    samples, reference = np.asarray(samples, np.float64), np.asarray(reference, np.float64)
    cross = _pairwise(samples, reference)
    precision = (cross <= _radii(reference, k)[None, :]).any(axis=1).mean()
    recall = (cross <= _radii(samples, k)[:, None]).any(axis=0).mean()
    return {"precision": float(precision), "recall": float(recall)}
