"""Judging samples: Frechet distances of feature statistics (FID, the feature judge), sweeps over NFE."""
