"""``pndm-train --init-from`` (start from a checkpoint's weights) and ``--t-focus START:SHARE``."""

from __future__ import annotations

import pytest
import torch

from pndm.errors import PndmError
from pndm.models import build_model, save_checkpoint
from pndm.train.loop import TrainConfig, Trainer
from pndm.train.presets import resolve_arch


def _checkpoint(path, arch):
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in resolve_arch(arch).items()}
    torch.manual_seed(123)
    model = build_model("ddpm", resolve_arch(arch))
    save_checkpoint(path, model.state_dict(),
                    {"architecture": "ddpm", "model": config, "diffusion": {"schedule": "linear", "T": 1000}})
    return model.state_dict()


def test_init_from_loads_weights_into_model_and_ema(tmp_path):
    state = _checkpoint(tmp_path / "init.safetensors", "tiny28")
    trainer = Trainer(TrainConfig(data="mnist", arch="tiny28", out=str(tmp_path / "run"), batch=4,
                                  init_from=str(tmp_path / "init.safetensors")))
    for name, value in state.items():
        torch.testing.assert_close(trainer.model.state_dict()[name], value)
        torch.testing.assert_close(trainer.ema[name], value)
    fresh = Trainer(TrainConfig(data="mnist", arch="tiny28", out=str(tmp_path / "fresh"), batch=4))
    name = next(iter(state))
    assert not torch.equal(fresh.model.state_dict()[name], state[name])


def test_init_from_other_architecture_is_refused(tmp_path):
    _checkpoint(tmp_path / "init.safetensors", "mnist28")
    with pytest.raises(PndmError, match="differs from --arch tiny28"):
        Trainer(TrainConfig(data="mnist", arch="tiny28", out=str(tmp_path / "run"),
                            init_from=str(tmp_path / "init.safetensors")))


def test_t_focus_draws_the_share_from_the_top(tmp_path):
    trainer = Trainer(TrainConfig(data="mnist", arch="tiny28", out=str(tmp_path / "run"), batch=64,
                                  t_focus="900:0.25"))
    t = torch.cat([trainer._timesteps(torch.Generator().manual_seed(s)) for s in range(20)]).view(20, 64)
    assert (t[:, :16] >= 900).all() and (t[:, 16:] < 900).any()
    for bad in ("900", "1000:0.5", "10:1.5", "a:b"):
        with pytest.raises(PndmError, match="--t-focus"):
            Trainer(TrainConfig(data="mnist", arch="tiny28", out=str(tmp_path / "bad"), t_focus=bad))


def test_v_prediction_run_learns_v_and_records_it(tmp_path):
    """--prediction v_prediction: the loss is on v = sqrt(ab) eps - sqrt(1-ab) x0 (not eps), the
    checkpoint says so, the loader hands the runtime a v model, and a resume cannot switch it."""
    from pndm.models import load

    config = TrainConfig(data="mnist", arch="tiny28", out=str(tmp_path / "run"), batch=4, steps=1,
                         prediction="v_prediction", init_from=None)
    trainer = Trainer(config)
    state = trainer.generator.get_state()
    x0, t, noise = trainer._batch()
    trainer.generator.set_state(state)
    torch.manual_seed(5)
    ab = trainer.alphas_cumprod[t].view(-1, 1, 1, 1)
    trainer.model.train()
    with torch.no_grad():
        output = trainer.model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t.float())
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.manual_seed(5)  # the same dropout draw inside train_step
    loss = trainer.train_step()
    assert loss == pytest.approx((output - v).square().mean().item(), rel=1e-5)
    assert loss != pytest.approx((output - noise).square().mean().item(), rel=1e-3)
    trainer.save()
    _, spec = load(str(tmp_path / "run" / "ema.safetensors"))
    assert spec.prediction == "v_prediction"

    with pytest.raises(PndmError, match="--prediction differs"):
        again = Trainer(TrainConfig(data="mnist", arch="tiny28", out=str(tmp_path / "run"), batch=4,
                                    steps=2))
        again.resume()
