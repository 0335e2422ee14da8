"""Every UNet2DModel configuration of the matrix loads and computes what diffusers computes (PyTorch)."""

import json

import pytest
import torch
from diffusers_fixtures import CONFIGS, SIZE, save_pipeline, save_unet, scheduler_kwargs

from pndm.errors import CheckpointError, PndmError
from pndm.models import load
from pndm.schedules import ScheduleSpec, make_schedule

pytest.importorskip("diffusers")


def _inputs(num_classes=None):
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, SIZE, SIZE, generator=g), torch.tensor([0.0, 997.5])
    return (x, t) if num_classes is None else (x, t, torch.tensor([0, num_classes - 1]))


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "fourier_skip"])
def test_loaded_model_computes_the_diffusers_unet(tmp_path, name):
    unet, folder = save_unet(tmp_path / "unet", name)
    model, spec = load(folder)
    args = _inputs(spec.num_classes)
    with torch.no_grad():
        expected = unet(args[0], args[1], class_labels=args[2] if len(args) == 3 else None).sample
        got = model(*args)
    assert (got - expected).abs().max().item() < 1e-4
    assert spec.architecture == ("ddpm" if name == "cifar10_layout" else "diffusers")
    assert spec.source_kind == "diffusers" and spec.image_shape == (3, SIZE, SIZE)
    assert spec.num_classes == (5 if name == "class_conditional" else None)
    assert set(spec.files) == {"config.json", "diffusion_pytorch_model.safetensors"}


def test_fourier_unet_is_a_ve_score_model_mapped_to_eps(tmp_path):
    """eps(x_t, t) = -sigma * unet(x_t / sqrt(ab), sigma) with sigma = sqrt((1 - ab) / ab)."""
    unet, folder = save_unet(tmp_path / "unet", "fourier_skip")
    model, spec = load(folder, schedule=ScheduleSpec("cosine"))
    x, t = _inputs()
    schedule = make_schedule("cosine")
    ab, sigma = schedule.alpha_bar(t).float(), schedule.sigma(t).float()  # sigma in float64: 1 - ab cancels
    with torch.no_grad():
        expected = -sigma.view(-1, 1, 1, 1) * unet(x / ab.sqrt().view(-1, 1, 1, 1), sigma).sample
        got = model(x, t)
    assert torch.isfinite(got).all() and (got - expected).abs().max().item() < 1e-3 * expected.abs().max()
    assert spec.schedule == "cosine" and spec.prediction == "epsilon"


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_pipeline_folder_gives_schedule_and_prediction(tmp_path, prediction):
    unet, _ = save_unet(tmp_path / "scratch", "default")
    folder = save_pipeline(tmp_path / "pipe", unet, "DDIMPipeline", "DDIMScheduler",
                           **scheduler_kwargs(prediction_type=prediction, num_train_timesteps=800))
    _, spec = load(folder)
    assert spec.prediction == prediction
    assert spec.schedule_spec == ScheduleSpec("quad", 800, 0.00085, 0.012)
    assert spec.path == str(folder.resolve())
    assert set(spec.files) == {"model_index.json", "unet/config.json",
                               "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"}


def test_pipeline_folder_without_unet_is_one_line(tmp_path):
    unet, _ = save_unet(tmp_path / "scratch", "default")
    folder = save_pipeline(tmp_path / "pipe", unet)
    for f in (folder / "unet").iterdir():
        f.unlink()
    (folder / "unet").rmdir()
    with pytest.raises(CheckpointError) as exc:
        load(folder)
    assert "without a unet/ folder" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("field, value, named", [
    ("beta_schedule", "sigmoid", "beta_schedule='sigmoid' is not supported"),
    ("prediction_type", "flow", "prediction_type='flow' is not supported"),
    ("rescale_betas_zero_snr", True, "rescale_betas_zero_snr=True is not supported"),
])
def test_unsupported_scheduler_configs_are_one_line(tmp_path, field, value, named):
    unet, _ = save_unet(tmp_path / "scratch", "default")
    folder = save_pipeline(tmp_path / "pipe", unet)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(PndmError) as exc:
        load(folder)
    assert named in str(exc.value) and "\n" not in str(exc.value)


def test_without_diffusers_the_error_says_how_to_install(tmp_path, monkeypatch):
    from pndm.models import diffusers_folder

    _, folder = save_unet(tmp_path / "unet", "default")
    monkeypatch.setattr(diffusers_folder, "diffusers_available", lambda: False)
    with pytest.raises(PndmError, match=r"pip install 'pndm\[diffusers\]'"):
        load(folder)
    load(save_unet(tmp_path / "mapped", "cifar10_layout")[1])  # the exact mapping needs no diffusers


def test_scheduler_settings_pndm_does_not_apply_are_notes_naming_the_option(tmp_path):
    """clip_sample, timestep_spacing, steps_offset, set_alpha_to_one: read, and each one that differs
    from what pndm-run does by default becomes a note (printed by the export, kept in the manifest)."""
    unet, _ = save_unet(tmp_path / "scratch", "default")
    folder = save_pipeline(tmp_path / "pipe", unet, "DDIMPipeline", "DDIMScheduler", clip_sample=True,
                           timestep_spacing="trailing", steps_offset=1, set_alpha_to_one=False)
    _, spec = load(folder)
    notes = " | ".join(spec.notes)
    assert "clip_sample=true" in notes and "--clip-x0" in notes
    assert "timestep_spacing='trailing'" in notes and "--grid trailing" in notes
    assert "steps_offset=1" in notes and "set_alpha_to_one=false" in notes
    plain = save_pipeline(tmp_path / "plain", unet, "DDIMPipeline", "DDIMScheduler", clip_sample=False)
    assert len(load(plain)[1].notes) == 1  # the layout note only


def test_variance_karras_and_sde_settings_are_notes(tmp_path):
    unet, _ = save_unet(tmp_path / "scratch", "default")
    ddpm = save_pipeline(tmp_path / "ddpm", unet, "DDPMPipeline", "DDPMScheduler",
                         variance_type="fixed_large", clip_sample=False)
    assert any("variance_type='fixed_large' is not used" in note for note in load(ddpm)[1].notes)
    dpm = save_pipeline(tmp_path / "dpm", unet, "DDPMPipeline", "DPMSolverMultistepScheduler",
                        use_karras_sigmas=True, algorithm_type="sde-dpmsolver++")
    notes = " | ".join(load(dpm)[1].notes)
    assert "use_karras_sigmas=true" in notes and "--grid karras" in notes
    assert "algorithm_type='sde-dpmsolver++'" in notes and "--method sde2" in notes
    plain = " | ".join(load(save_pipeline(tmp_path / "plain", unet, "DDPMPipeline",
                                          "DPMSolverMultistepScheduler"))[1].notes)
    assert "use_karras_sigmas" not in plain and "algorithm_type" not in plain and "variance_type" not in plain


def test_a_bare_unet_folder_says_what_schedule_it_assumes(tmp_path):
    _, folder = save_unet(tmp_path / "unet", "default")
    assert any("no scheduler config" in note for note in load(folder)[1].notes)
    _, given = load(folder, schedule=ScheduleSpec("cosine"))
    assert not any("no scheduler config" in note for note in given.notes)


def test_latent_pipeline_is_refused_in_one_line(tmp_path):
    """A pipeline with a VAE/VQ decoder: its UNet makes latents, not images."""
    unet, _ = save_unet(tmp_path / "scratch", "default")
    folder = save_pipeline(tmp_path / "pipe", unet)
    index = folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "_class_name": "LDMPipeline",
                                 "vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(CheckpointError) as exc:
        load(folder)
    assert "latent diffusion pipeline (it has a vqvae)" in str(exc.value) and "\n" not in str(exc.value)


def test_sample_size_the_downsamplings_cannot_halve_is_one_line(tmp_path):
    pytest.importorskip("diffusers").UNet2DModel(**{**CONFIGS["default"], "sample_size": 15}).save_pretrained(
        tmp_path / "odd")
    with pytest.raises(CheckpointError) as exc:
        load(tmp_path / "odd")
    assert "sample_size 15x15 is not a multiple of 2" in str(exc.value) and "\n" not in str(exc.value)


def test_variant_only_weights_are_named(tmp_path):
    diffusers_unet_folder = tmp_path / "variant"
    unet, _ = save_unet(tmp_path / "scratch", "default")
    unet.save_pretrained(diffusers_unet_folder, variant="fp16")
    with pytest.raises(CheckpointError) as exc:
        load(diffusers_unet_folder)
    assert "only variant weights (diffusion_pytorch_model.fp16.safetensors)" in str(exc.value)


def test_sharded_weights_are_named_with_the_fix(tmp_path):
    unet, _ = save_unet(tmp_path / "scratch", "default")
    unet.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    with pytest.raises(CheckpointError) as exc:
        load(tmp_path / "sharded")
    assert "weights are sharded (diffusion_pytorch_model.safetensors.index.json)" in str(exc.value)
    assert "max_shard_size" in str(exc.value) and "\n" not in str(exc.value)
