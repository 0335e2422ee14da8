"""pndm's FID against pytorch-fid's: the same images through the same randomly initialised network.

pytorch-fid builds its network from torchvision's Inception3, and PyPI's torchvision does not import
beside this torch build (its compiled operators do not match). The test therefore installs a
``torchvision`` package object whose modules are torchvision's own Python sources, read from a
torchvision wheel on disk without its compiled part, and imports pytorch-fid on top of it. Where
pytorch-fid (``pip install --no-deps pytorch-fid``) or such a wheel is absent the test is skipped.
The weights are random (none can be downloaded here) but scaled so activations stay O(1) through
the 94 layers: every structural detail (padding-free average pools, the max pool of Mixed_7c, the
299x299 bilinear resize, [-1, 1] scaling) shows in the features.
"""

from __future__ import annotations

import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pndm.errors import PndmError
from pndm.scoring.frechet import frechet_distance, statistics
from pndm.scoring.inception import FIDInception, load_inception

WHEEL_DIRS = [Path("/opt/pypi-more/files")]


def _torchvision_sources(tmp_path_factory) -> Path | None:
    wheels = sorted(w for d in WHEEL_DIRS if d.is_dir() for w in d.glob("torchvision-*.whl"))
    if not wheels:
        return None
    root = tmp_path_factory.mktemp("torchvision-src")
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extractall(root, [n for n in z.namelist() if n.startswith("torchvision/") and n.endswith(".py")])
    return root


@pytest.fixture(scope="module")
def pytorch_fid(tmp_path_factory):
    pytest.importorskip("pytorch_fid", reason="pip install --no-deps pytorch-fid")
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith(("torchvision.",
                                                                                          "pytorch_fid"))}
    try:
        import torchvision  # noqa: F401  (a working install is used as it is)
    except Exception:
        root = _torchvision_sources(tmp_path_factory)
        if root is None:
            pytest.skip("no torchvision sources (a torchvision wheel) to build pytorch-fid's network from")
        for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[name]
        package = types.ModuleType("torchvision")
        package.__path__ = [str(root / "torchvision")]
        package.__version__ = "0.28.0"
        sys.modules["torchvision"] = package
        import torchvision.models  # noqa: F401  (pure Python: the model definitions)

        package.models = sys.modules["torchvision.models"]
    from pytorch_fid import fid_score, inception

    yield inception, fid_score
    for name in [k for k in sys.modules if k == "torchvision" or k.startswith(("torchvision.",
                                                                                "pytorch_fid"))]:
        del sys.modules[name]
    sys.modules.update(saved)


def _random_state(seed: int) -> dict[str, torch.Tensor]:
    """He-scaled conv weights and random BatchNorm statistics for every FID-Inception parameter."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in FIDInception().state_dict().items():
        if name.endswith("conv.weight"):
            fan_in = value[0].numel()
            state[name] = torch.randn(value.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif name.endswith(("bn.weight", "bn.running_var")):
            state[name] = 0.5 + torch.rand(value.shape, generator=g)
        elif name.endswith(("bn.bias", "bn.running_mean")):
            state[name] = 0.1 * torch.randn(value.shape, generator=g)
        else:  # num_batches_tracked
            state[name] = value
    state["fc.weight"] = 0.01 * torch.randn(1008, 2048, generator=g)
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.mark.slow
def test_fid_matches_pytorch_fid(pytorch_fid, tmp_path, monkeypatch):
    inception, fid_score = pytorch_fid
    state = _random_state(0)
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: state)
    theirs = inception.InceptionV3([3]).eval()
    weights = tmp_path / "pt_inception.pth"
    torch.save(state, weights)
    ours = load_inception(weights)

    g = torch.Generator().manual_seed(1)
    # Two image sets in [0, 1] at 28x28 (resized to 299 inside both networks): smooth blobs + noise.
    base = torch.rand(2, 1, 3, 7, 7, generator=g)
    images = [torch.nn.functional.interpolate(base[i].expand(8, -1, -1, -1)
                                              + 0.3 * torch.rand(8, 3, 7, 7, generator=g), size=28,
                                              mode="bilinear").clamp(0, 1) for i in range(2)]
    with torch.no_grad():
        f_theirs = [theirs(x)[0].squeeze(-1).squeeze(-1).double().numpy() for x in images]
        f_ours = [ours.features(x).double().numpy() for x in images]
    for a, b in zip(f_theirs, f_ours, strict=True):
        assert a.std() > 1e-2  # the random network has not collapsed to constants
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())

    def their_fid(features):
        (m1, s1), (m2, s2) = [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in features]
        return fid_score.calculate_frechet_distance(m1, s1, m2, s2)

    ours_fid = frechet_distance(*statistics(f_ours[0]), *statistics(f_ours[1]))
    assert ours_fid == pytest.approx(their_fid(f_theirs), rel=1e-3)
    assert ours_fid > 0.01 * np.trace(np.cov(f_ours[0], rowvar=False))  # the sets differ measurably


def test_inception_file_errors_say_what_to_get(tmp_path):
    with pytest.raises(PndmError, match="pt_inception-2015-12-05-6726825d.pth"):
        load_inception(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(PndmError, match="not the FID Inception weights"):
        load_inception(bad)
